"""``mmai saliency``: the saliency panel of any query and image, from a re-ranker checkpoint.

    mmai saliency --checkpoint runs/reranker/checkpoints/last.ckpt \\
        --image data/synth_cub/CUB_200_2011/images/001.x/x_0001.jpg \\
        --query "a small bird with a short orange beak" --out panel.png

The panel shows original | heatmap | overlay (the image as the model sees it: resized and
centre-cropped), the query, the match logit, and one overlay per query word.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, UnidentifiedImageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmai saliency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a re-ranker checkpoint (mmai rerank fit)")
    parser.add_argument("--image", required=True, type=Path, help="the candidate image")
    parser.add_argument("--query", required=True, help="the text query")
    parser.add_argument("--out", type=Path, default=Path("panel.png"), help="PNG to write (default panel.png)")
    parser.add_argument("--method", choices=["gradcam", "attention"], default="gradcam",
                        help="gradient x attention (default) or raw cross-attention")
    parser.add_argument("--rank", type=int, default=None, help="rank to print on the panel (optional)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        image = Image.open(args.image)
        image.load()
    except FileNotFoundError:
        raise SystemExit(f"mmai saliency: --image {str(args.image)!r} does not exist")
    except (UnidentifiedImageError, OSError) as error:
        raise SystemExit(f"mmai saliency: --image {str(args.image)!r} is not a readable image ({error})")
    from mmai.inference import load_stage2

    stage2 = load_stage2(args.checkpoint, device=args.device)
    panel = stage2.explain(args.query, image, rank=args.rank, method=args.method)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    panel.save(args.out)
    logit = float(stage2.rerank(args.query, [image])[0])
    print(f"match logit {logit:.3f}; panel {panel.width}x{panel.height} written to {args.out}")
    return 0
