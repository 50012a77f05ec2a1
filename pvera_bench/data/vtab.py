"""Reader of the VTAB-1k folder layout shared by the field (NOAH/RepAdapter zips).

``<root>/<task>/{train800,val200,train800val200,test}.txt`` hold one ``relative/path label``
per line; the paths are relative to the task folder. A split is decoded and resized once
into a uint8 tensor ``(N, 3, H, W)``; normalisation happens on the device, per batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pvera_bench.config import SPLITS
from pvera_bench.core.errors import UserError
from pvera_bench.core.files import load_tensors, write_atomically

log = logging.getLogger(__name__)

FIXED_COUNTS = {"train800": 800, "val200": 200, "train800val200": 1000}  # the "1k" of VTAB-1k
CACHE_DIR = ".cache"
CACHE_FORMAT = 1  # bump when the decoded layout changes
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass
class SplitData:
    images: torch.Tensor  # uint8, (N, 3, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)


def locate_task(root: Path, name: str, builders: dict[str, Callable[[Path], None]]) -> Path:
    """The task's folder; builds it first when it is missing and an offline builder exists."""
    task_dir = root / name
    for folder, what in ((root, "data.root"), (task_dir, f"the task folder of {name}")):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{what} {folder} is a file, not a folder; point data.root at the VTAB-1k folders")
    if all((task_dir / f"{split}.txt").exists() for split in SPLITS):
        return task_dir
    if name in builders:
        log.info("building task %s in %s", name, task_dir)
        try:
            builders[name](task_dir)
        except OSError as error:
            raise UserError(
                f"cannot build {name} in {task_dir} ({error.strerror or error}); point data.root at a folder you can "
                "write to"
            ) from None
        return task_dir
    raise UserError(
        f"no VTAB-1k data for {name} in {task_dir} (expected {', '.join(s + '.txt' for s in SPLITS)}); "
        f"prepare it with `pvera-bench prepare {name} --root {root}` or point data.root at your copy"
    )


def split_lines(list_file: Path) -> list[str]:
    """The lines of a split file; a one-line UserError when it cannot be read as text."""
    try:
        return list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{list_file}: not a text file (lines 'relative/path label'); rebuild the task") from None
    except OSError as error:
        raise UserError(
            f"{list_file}: cannot be read ({error.strerror or error}); check the file and its folder"
        ) from None


def read_split_file(task_dir: Path, split: str, num_classes: int) -> list[tuple[Path, int]]:
    """Parse ``<split>.txt``; every problem is reported with its file and line."""
    list_file = task_dir / f"{split}.txt"
    root = task_dir.resolve()
    entries = []
    for number, line in enumerate(split_lines(list_file), start=1):
        if not line.strip():
            continue
        where = f"{list_file}:{number}"
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise UserError(f"{where}: expected 'relative/path label', got {line!r}")
        relative, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise UserError(f"{where}: label {label_text!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise UserError(f"{where}: label {label} is outside [0, {num_classes}) (dataset.num_classes={num_classes})")
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise UserError(f"{where}: path {relative!r} leaves the task folder {root}")
        entries.append((path, label))
    if not entries:
        raise UserError(f"{list_file}: the split is empty")
    return entries


def check_against_manifest(task_dir: Path, split: str, count: int, num_classes: int) -> None:
    """The split must have the size its manifest records (or the fixed VTAB-1k size) and the task its classes."""
    list_file = task_dir / f"{split}.txt"
    manifest_file = task_dir / "manifest.json"
    manifest = {}
    if manifest_file.is_file():
        try:
            manifest = json.loads(manifest_file.read_text())
        except ValueError:
            raise UserError(f"{manifest_file}: not valid JSON; rebuild the task with pvera-bench prepare") from None
    built_for = manifest.get("num_classes", num_classes)
    if built_for != num_classes:
        raise UserError(f"{manifest_file}: the task has {built_for} classes but dataset.num_classes={num_classes}")
    expected = manifest.get("splits", {}).get(split, {}).get("count", FIXED_COUNTS.get(split))
    if expected is not None and count != expected:
        source = "manifest.json" if manifest else "VTAB-1k"
        raise UserError(f"{list_file}: {count} images listed, {source} says {expected}")


def decode_image(path: Path, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Decode one image to RGB, resize it to ``size`` (height, width), and return it as uint8 HWC."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), resample)
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: listed in the split file but missing") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{path}: cannot be decoded ({error})") from None


def source_fingerprint(entries: list[tuple[Path, int]], size: tuple[int, int], interpolation: str) -> str:
    """Changes whenever a listed file, a label, the resolution or the interpolation changes."""
    digest = hashlib.sha256(f"{CACHE_FORMAT} {size} {interpolation}\n".encode())
    for path, label in entries:
        stat = listed_file(path)
        digest.update(f"{path} {label} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def listed_file(path: Path) -> os.stat_result:
    """The status of an image a split file lists; a one-line UserError when it is missing or cannot be reached."""
    try:
        return path.stat()
    except FileNotFoundError:
        raise UserError(f"{path}: listed in the split file but missing") from None
    except OSError as error:
        raise UserError(f"{path}: listed in the split file but cannot be read ({error.strerror or error})") from None


def split_entries(
    task_dir: Path, split: str, num_classes: int, limit: int | None = None
) -> tuple[list[tuple[Path, int]], str]:
    """The (image, label) entries a run reads from a split, checked (lines, labels, paths, count), and the suffix
    that names them in the cache: with ``limit``, at most that many, a fixed random subset (seed 0) in file order."""
    entries = read_split_file(task_dir, split, num_classes)
    check_against_manifest(task_dir, split, len(entries), num_classes)
    if limit is None or len(entries) <= limit:
        return entries, ""
    keep = torch.randperm(len(entries), generator=torch.Generator().manual_seed(0))[:limit].sort().values
    return [entries[i] for i in keep.tolist()], f"-subset{limit}"


def check_split(task_dir: Path, split: str, num_classes: int, limit: int | None = None) -> None:
    """Everything about a split that can be checked before anything trains: its file (see :func:`split_entries`)
    and that every image it lists exists. Decoding stays lazy."""
    for path, _ in split_entries(task_dir, split, num_classes, limit)[0]:
        listed_file(path)


def read_cache(path: Path, fingerprint: str) -> SplitData | None:
    if not path.is_file():
        return None
    try:
        payload = load_tensors(path)
    except Exception as error:  # a truncated or foreign file is rebuilt, never trusted
        log.warning("decoded cache %s is unreadable (%s); rebuilding it", path, type(error).__name__)
        return None
    if not isinstance(payload, dict) or payload.get("fingerprint") != fingerprint:
        log.info("decoded cache %s is stale; rebuilding it", path)
        return None
    return SplitData(payload["images"], payload["labels"])


def write_cache(path: Path, fingerprint: str, data: SplitData) -> None:
    """Save atomically; a read-only dataset folder only costs the cache."""
    payload = {"fingerprint": fingerprint, "images": data.images, "labels": data.labels}
    try:
        write_atomically(path, lambda file: torch.save(payload, file))  # concurrent runs race: a whole file wins
    except OSError as error:
        log.warning("cannot write the decoded cache %s (%s); decoding again next time", path, error)


def load_split(
    task_dir: Path,
    split: str,
    num_classes: int,
    size: tuple[int, int],
    interpolation: str = "bicubic",
    workers: int = 4,
    progress: bool = True,
    cache: bool = True,
    limit: int | None = None,
) -> SplitData:
    """The split as one uint8 tensor, decoded once and then read from ``<task>/.cache/``; with ``limit``, the
    subset of :func:`split_entries`."""
    entries, subset = split_entries(task_dir, split, num_classes, limit)
    name = f"{split}-{size[0]}x{size[1]}-{interpolation}{subset}"
    cache_path = task_dir / CACHE_DIR / f"{name}.pt"
    fingerprint = source_fingerprint(entries, size, interpolation) if cache else ""
    if cache and (cached := read_cache(cache_path, fingerprint)) is not None:
        return cached
    data = decode_split(
        entries, size, interpolation, workers, progress and len(entries) >= 2000, f"decode {task_dir.name}/{split}"
    )
    if cache:
        write_cache(cache_path, fingerprint, data)
    return data


def decode_split(
    entries: list[tuple[Path, int]],
    size: tuple[int, int],
    interpolation: str,
    workers: int,
    progress: bool,
    description: str,
) -> SplitData:
    """Decode and resize every listed image into one uint8 tensor ``(N, 3, H, W)``."""
    resample = RESAMPLE.get(interpolation, Image.Resampling.BICUBIC)
    images = np.empty((len(entries), size[0], size[1], 3), dtype=np.uint8)

    def decode(index: int) -> None:
        images[index] = decode_image(entries[index][0], size, resample)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in tqdm(
            pool.map(decode, range(len(entries))),
            total=len(entries),
            desc=description,
            disable=not progress,
            leave=False,
        ):
            pass
    labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
    return SplitData(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels)
