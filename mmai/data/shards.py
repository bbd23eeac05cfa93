"""Convert CUB (real or synthetic) into WebDataset tar shards, one set per split.

Samples are written in a seeded random order (CUB lists images class by class). Each sample is
keyed by its zero-padded image id and holds ``jpg`` (RGB JPEG), ``json`` (image
id, class id and name, the ten captions, bounding box and, where the extras exist, part boxes
and the diary entry) and, when a song exists, ``wav``. Tar members carry fixed metadata (mtime 0,
root owner), so the same input gives byte-identical shards, and ``manifest.json`` records the
sha256 and size of each one. Grayscale and CMYK JPEGs (real CUB has both) are converted to RGB;
JPEGs that are already RGB are stored byte for byte.

A run writes into a temporary folder beside ``out`` (``.NAME.tmp-PID``) and swaps it in only when
every sample was written, so a failed run leaves an existing shard folder exactly as it was, and
shards of earlier runs that the new manifest does not list are gone. :func:`verify_shards` checks
shards against their manifest (sizes; sha256 in full, or when a file changed since it was hashed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
import tarfile
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from mmai.data.consistency import TABLE_FILE, write_caption_table
from mmai.data.cub import SPLITS, CUBImage, CUBIndex, CUBLayoutError, read_captions, read_cub, read_extras, split_images
from mmai.io import atomic_open, atomic_write_text, fsync_dir

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
HASH_CACHE = ".verify-cache.json"  # {shard file: {size, mtime_ns, sha256}} of the last hash of each shard
_OURS = re.compile(rf"^({'|'.join(SPLITS)})-\d{{5}}\.tar(\.tmp)?$|^{re.escape(MANIFEST)}(\.tmp)?$"
                   rf"|^{re.escape(HASH_CACHE)}")  # what a run writes: replaced as a whole by the next run


class ShardError(ValueError):
    """A shard that does not match its manifest (missing, another size, another sha256)."""


@dataclasses.dataclass
class BadFile:
    path: str
    reason: str


def _rgb_jpeg(path: Path) -> bytes:
    """The file's bytes if it is an RGB JPEG; otherwise decoded and re-encoded as RGB JPEG."""
    raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as image:
        if image.format == "JPEG" and image.mode == "RGB":
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()  # a fast reduced-size decode: catches truncated and corrupt files
            return raw
        image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()


def _sample(index: CUBIndex, image: CUBImage, extras, split: str) -> dict[str, bytes]:
    captions = read_captions(index, image)
    if not captions:
        raise ValueError(f"{index.caption_path(image)}: caption file has no non-blank line")
    meta = {
        "image_id": image.image_id,
        "class_id": image.class_id,
        "class_name": image.class_name,
        "file": image.relpath,
        "split": split,
        "captions": captions,
        "bbox": list(image.bbox) if image.bbox else None,
    }
    sample = {"__key__": f"{image.image_id:06d}", "jpg": _rgb_jpeg(index.image_path(image))}
    if extras is not None:
        if image.image_id in extras.part_boxes:
            meta["parts"] = {k: list(v) for k, v in extras.part_boxes[image.image_id].items()}
        if image.image_id in extras.episodes:
            meta["episode"] = extras.episodes[image.image_id]
    audio = index.audio_path(image)
    if audio is not None:
        sample["wav"] = audio.read_bytes()
    sample["json"] = json.dumps(meta, sort_keys=True).encode()
    return sample


class _ShardSink:
    """Writes samples into ``{split}-{NNNNN}.tar`` files of at most ``samples_per_shard`` each
    (each written atomically and fsynced, :func:`mmai.io.atomic_open`)."""

    def __init__(self, out: Path, split: str, samples_per_shard: int):
        self.out, self.split, self.samples_per_shard = out, split, samples_per_shard
        self.shards: list[dict] = []
        self._tar: tarfile.TarFile | None = None
        self._file = contextlib.ExitStack()  # the open atomic file under the current tar
        self._count = 0

    def write(self, sample: dict[str, bytes]) -> None:
        if self._tar is None or self._count == self.samples_per_shard:
            self._close_current()
            name = f"{self.split}-{len(self.shards):05d}.tar"
            handle = self._file.enter_context(atomic_open(self.out / name))
            self._tar = tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT)
            self.shards.append({"file": name, "samples": 0})
            self._count = 0
        for ext in ("jpg", "json", "wav"):
            if ext in sample:
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size, info.mtime, info.mode = len(sample[ext]), 0, 0o444
                self._tar.addfile(info, io.BytesIO(sample[ext]))
        self._count += 1
        self.shards[-1]["samples"] += 1

    def _close_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()  # the end-of-archive blocks; the file it was given stays open
        self._file.close()  # flush, fsync, rename into place
        data = (self.out / self.shards[-1]["file"]).read_bytes()
        self.shards[-1]["sha256"], self.shards[-1]["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
        self._tar = None

    def close(self) -> list[dict]:
        self._close_current()
        return self.shards


def write_shards(cub_root: Path | str, out: Path | str, split: str = "zero-shot",
                 captions_root: Path | str | None = None, samples_per_shard: int = 256,
                 skip_bad: bool = False, progress: bool = True, seed: int = 0) -> dict:
    """Write train/val/test shards and ``manifest.json`` into ``out``; returns the manifest.

    Args:
        cub_root: ``CUB_200_2011/`` or its parent.
        out: output folder (created). It may hold only an earlier run's shards, manifest and hash
            cache: they are replaced as a whole once the new run succeeded (a failed run changes
            nothing there).
        split: ``zero-shot`` (caption release class split) or ``standard`` (CUB image split).
        captions_root: the caption release's folder, if not beside ``cub_root``.
        samples_per_shard: images per tar (default 256: CUB is small, and DDP needs at least
            ranks × workers training shards).
        skip_bad: skip missing/unreadable files and count them in the manifest, instead of failing.
        seed: the order of samples within a split is a seeded permutation (default 0). CUB lists
            images class by class; written in that order, each shard would hold a few species and
            a streaming shuffle buffer could not mix them, so most contrastive negatives would be
            same-species images with indistinguishable captions.

    A caption file with another number of lines than most (CUB has 10 per image) is written
    with the captions it has, warned about on stderr and counted in the manifest's
    ``short_captions``.

    Raises:
        CUBLayoutError: unless ``skip_bad``, listing every missing or undecodable file at once;
            or ``out`` holds files that are not shards of an earlier run.
    """
    index = read_cub(cub_root, captions_root)
    if index.captions_root is None:
        raise CUBLayoutError(f"no caption release (cvpr2016_cub/text_c10) found beside {index.root}: "
                             "pass --captions-root")
    extras = read_extras(index)
    assignments = split_images(index, split)
    bad = _find_missing(index, assignments)
    out = Path(out)
    _check_output(out)
    final, out = out, out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        manifest = _write_all(index, extras, assignments, out, split, samples_per_shard, skip_bad, progress, seed, bad)
        _swap_in(out, final)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    _record_hashes(final, manifest)
    return manifest


def _check_output(out: Path) -> None:
    """Refuse an output folder with files that are not an earlier run's (they would be lost in the swap)."""
    if out.exists() and not out.is_dir():
        raise CUBLayoutError(f"--out {out} is a file, not a folder; choose a folder for the shards")
    foreign = sorted(p.name for p in out.iterdir() if not _OURS.match(p.name)) if out.is_dir() else []
    if foreign:
        raise CUBLayoutError(f"--out {out} holds files that are not shards of an earlier run "
                             f"({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); choose an empty "
                             "or new folder (a run replaces the whole folder)")


def _swap_in(new: Path, final: Path) -> None:
    """Replace ``final`` by ``new`` (two renames; the old folder is removed after)."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    new.rename(final)
    fsync_dir(final.parent)  # the swap itself survives a power cut (the files in it were fsynced)
    shutil.rmtree(old, ignore_errors=True)


def _write_all(index, extras, assignments, out: Path, split: str, samples_per_shard: int, skip_bad: bool,
               progress: bool, seed: int, bad: list[BadFile]) -> dict:
    missing = {entry.path for entry in bad}
    manifest: dict = {"format_version": FORMAT_VERSION, "split": split, "seed": seed, "cub_root": str(index.root),
                      "captions_root": str(index.captions_root), "has_extras": extras is not None,
                      "samples_per_shard": samples_per_shard, "splits": {}}
    total = sum(len(images) for images in assignments.values())
    bar = tqdm(total=total, desc="writing shards", unit="img", disable=not progress)
    try:  # closed on an error too: the bar must not swallow the error's line
        caption_counts: list[tuple[str, int]] = []
        for name in SPLITS:
            sink = _ShardSink(out, name, samples_per_shard)
            captions = 0
            for image in random.Random(f"{seed}/{name}").sample(assignments[name], len(assignments[name])):
                bar.update()
                if str(index.image_path(image)) in missing or str(index.caption_path(image)) in missing:
                    continue
                try:
                    sample = _sample(index, image, extras, name)
                except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three on bad files
                    bad.append(BadFile(str(index.image_path(image)), f"{type(error).__name__}: {error}"))
                    continue
                count = len(json.loads(sample["json"])["captions"])
                captions += count
                caption_counts.append((str(index.caption_path(image)), count))
                sink.write(sample)
            shards = sink.close()
            manifest["splits"][name] = {
                "images": sum(s["samples"] for s in shards), "captions": captions,
                "classes": sorted({image.class_id for image in assignments[name]}), "shards": shards,
            }
    finally:
        bar.close()
    if bad and not skip_bad:
        raise _bad_files_error(bad)
    manifest["skipped"] = {"count": len(bad), "files": [dataclasses.asdict(b) for b in bad]}
    manifest["short_captions"] = _odd_caption_files(caption_counts)
    manifest["species"] = _species_annotations(extras)
    # what each caption states (synthetic CUB only): consistency labels, mmai.data.consistency
    manifest["caption_attributes"] = TABLE_FILE if write_caption_table(index.extras_root, out) else None
    twins = None if index.extras_root is None else Path(index.extras_root) / "twins.jsonl"
    manifest["twins"] = str(twins.resolve()) if twins is not None and twins.is_file() else None  # training negatives
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _species_annotations(extras) -> list[dict]:
    """Each species' attributes and swap partners from ``mmai_extras/species_attributes.json``
    (synthetic CUB only; ``[]`` otherwise): what the evaluation's binding probe reads."""
    species = (extras.species_attributes if extras is not None else {}).get("species", [])
    return [{"class_id": int(entry["class_id"]), "attributes": entry.get("attributes", {}),
             "swap_partners": entry.get("swap_partners", [])} for entry in species]


def _odd_caption_files(counts: list[tuple[str, int]]) -> dict:
    """Caption files with another number of captions than most (warned about on stderr)."""
    if not counts:
        return {"expected": None, "count": 0, "files": []}
    numbers = [count for _, count in counts]
    expected = max(set(numbers), key=numbers.count)
    odd = [{"path": path, "captions": count} for path, count in counts if count != expected]
    for entry in odd[:20]:
        print(f"warning: {entry['path']}: {entry['captions']} caption line(s), most files have {expected}; "
              "written with the captions it has", file=sys.stderr)
    if len(odd) > 20:
        print(f"warning: ... and {len(odd) - 20} more caption files with another number of lines", file=sys.stderr)
    return {"expected": expected, "count": len(odd), "files": odd}


def _find_missing(index: CUBIndex, assignments: dict[str, list[CUBImage]]) -> list[BadFile]:
    bad = []
    for images in assignments.values():
        for image in images:
            for path in (index.image_path(image), index.caption_path(image)):
                if not path.exists():
                    bad.append(BadFile(str(path), "missing"))
    return bad


def _bad_files_error(bad: list[BadFile]) -> CUBLayoutError:
    listing = "\n  ".join(f"{b.path}: {b.reason}" for b in bad[:200])
    more = f"\n  ... and {len(bad) - 200} more" if len(bad) > 200 else ""
    return CUBLayoutError(f"{len(bad)} missing or unreadable file(s):\n  {listing}{more}\n"
                          "Fix or restore them, or pass --skip-bad to skip them (they are counted in the manifest).")


def read_manifest(shard_dir: Path | str) -> dict:
    """Load ``manifest.json`` of a shard folder, with a clear error if it is not one."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: write shards first with "
                                f"`mmai data shards --cub-root DIR --out {shard_dir}`")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: shard format {manifest.get('format_version')} is not {FORMAT_VERSION}; "
                         "rewrite the shards with this version of mmai")
    return manifest


def shard_urls(shard_dir: Path | str, split: str, manifest: dict | None = None) -> list[str]:
    """Paths of the shards of one split, checked to exist."""
    manifest = manifest or read_manifest(shard_dir)
    if split not in manifest["splits"]:
        raise KeyError(f"split {split!r} not in {Path(shard_dir) / MANIFEST}; it has {list(manifest['splits'])}")
    urls = [str(Path(shard_dir) / shard["file"]) for shard in manifest["splits"][split]["shards"]]
    missing = [u for u in urls if not Path(u).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) listed in the manifest are missing, e.g. {missing[0]}")
    return urls


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_hash_cache(shard_dir: Path) -> dict:
    try:
        cache = json.loads((shard_dir / HASH_CACHE).read_text())
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_hash_cache(shard_dir: Path, cache: dict) -> None:
    try:  # a cache: no fsync (lost or cut short by a power cut, it is read as empty and rebuilt)
        atomic_write_text(shard_dir / HASH_CACHE, json.dumps(cache, indent=1, sort_keys=True) + "\n", fsync=False)
    except OSError:
        pass  # a read-only shard folder: hash again next time (atomic_write_text left no temporary file)


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _record_hashes(shard_dir: Path, manifest: dict) -> None:
    """The hash cache of freshly written shards (their sha256 is the manifest's)."""
    cache = {shard["file"]: {**_stamp(shard_dir / shard["file"]), "sha256": shard["sha256"]}
             for info in manifest["splits"].values() for shard in info["shards"]}
    _write_hash_cache(shard_dir, cache)


def verify_shards(shard_dir: Path | str, manifest: dict | None = None, full: bool = False) -> int:
    """Check every shard the manifest lists: it exists, has the recorded size, and (with ``full``,
    or when the hash cache says the file's size or mtime changed since it was last hashed, or it
    was never hashed here) the recorded sha256.

    Args:
        shard_dir: the folder of ``manifest.json``.
        manifest: the manifest (default: read from ``shard_dir``).
        full: hash every shard (default ``False``: only changed or never-hashed ones).

    Returns:
        How many shards were hashed.

    Raises:
        ShardError: the first shard that does not match, named, with what to do.
    """
    shard_dir = Path(shard_dir)
    manifest = manifest or read_manifest(shard_dir)
    cache = _read_hash_cache(shard_dir)
    hashed = 0
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            path = shard_dir / shard["file"]
            if not path.is_file():
                _shard_error(shard_dir, path, "is missing")
            stamp = _stamp(path)
            if shard.get("bytes") is not None and stamp["size"] != shard["bytes"]:
                _shard_error(shard_dir, path, f"has {stamp['size']} bytes, the manifest says {shard['bytes']}")
            known = cache.get(shard["file"], {})
            if full or {k: known.get(k) for k in stamp} != stamp or known.get("sha256") != shard["sha256"]:
                digest = _sha256(path)
                hashed += 1
                if digest != shard["sha256"]:
                    _shard_error(shard_dir, path,
                                 f"has sha256 {digest[:12]}…, the manifest says {shard['sha256'][:12]}…")
                cache[shard["file"]] = {**stamp, "sha256": digest}
    if hashed:
        _write_hash_cache(shard_dir, cache)
    return hashed


def _shard_error(shard_dir: Path, path: Path, problem: str) -> None:
    raise ShardError(f"shard {path} {problem}: the shard folder is damaged or mixes runs; rewrite the shards with "
                     f"`mmai data shards --cub-root DIR --out {shard_dir}`")
