"""A tiny CUB root in the real layout, with the quirks of the real release, for reader tests.

Real CUB has grayscale and CMYK JPEGs, and the caption files have stray blank lines and
whitespace; this writer puts each of those in. It writes no ``mmai_extras`` (real CUB has none).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

CLASSES = ["001.Alpha_Bird", "002.Beta_Bird", "003.Gamma_Bird", "004.Delta_Bird"]


def write_tiny_cub(root: Path, images_per_class: int = 4) -> Path:
    """Write ``root/CUB_200_2011`` and ``root/cvpr2016_cub``; returns ``root``."""
    cub, text = root / "CUB_200_2011", root / "cvpr2016_cub"
    rows = {"images": [], "labels": [], "split": [], "boxes": []}
    image_id = 0
    for class_id, name in enumerate(CLASSES, 1):
        (cub / "images" / name).mkdir(parents=True, exist_ok=True)
        (text / "text_c10" / name).mkdir(parents=True, exist_ok=True)
        for n in range(images_per_class):
            image_id += 1
            stem = f"{name.split('.')[1]}_{n:04d}_{image_id}"
            image = Image.new("RGB", (48, 40), (40 * class_id, 200 - 30 * n, 90))
            if image_id == 2:
                image = image.convert("L")  # grayscale, as some real CUB images are
            if image_id == 3:
                image = image.convert("CMYK")  # CMYK, as a few real CUB images are
            image.save(cub / "images" / name / f"{stem}.jpg", format="JPEG")
            lines = [f"  a bird of class {class_id} number {n} caption {c}  " for c in range(10)]
            lines.insert(3, "")  # a stray blank line, as in the real release
            (text / "text_c10" / name / f"{stem}.txt").write_text("\n".join(lines) + "\n\n")
            rows["images"].append(f"{image_id} {name}/{stem}.jpg")
            rows["labels"].append(f"{image_id} {class_id}")
            rows["split"].append(f"{image_id} {int(n % 2 == 0)}")
            rows["boxes"].append(f"{image_id} 2.0 3.0 40.0 30.0")
    (cub / "images.txt").write_text("\n".join(rows["images"]) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(rows["labels"]) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(rows["split"]) + "\n")
    (cub / "bounding_boxes.txt").write_text("\n".join(rows["boxes"]) + "\n")
    (cub / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(CLASSES, 1)))
    (text / "trainclasses.txt").write_text(f"{CLASSES[0]}\n{CLASSES[1]}\n")
    (text / "valclasses.txt").write_text(f"{CLASSES[2]}\n")
    (text / "testclasses.txt").write_text(f"{CLASSES[3]}\n")
    (text / "trainvalclasses.txt").write_text("".join(f"{c}\n" for c in CLASSES[:3]))
    return root
