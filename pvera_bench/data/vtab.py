"""Reader of the VTAB-1k folder layout shared by the field (NOAH/RepAdapter zips).

``<root>/<task>/{train800,val200,train800val200,test}.txt`` hold one ``relative/path label``
per line; the paths are relative to the task folder. A split is decoded and resized once
into a uint8 tensor ``(N, 3, H, W)``; normalisation happens on the device, per batch.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pvera_bench.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train800", "val200", "train800val200", "test")
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
    if all((task_dir / f"{split}.txt").is_file() for split in SPLITS):
        return task_dir
    if name in builders:
        log.info("building task %s in %s", name, task_dir)
        builders[name](task_dir)
        return task_dir
    raise UserError(
        f"no VTAB-1k data for {name} in {task_dir} (expected {', '.join(s + '.txt' for s in SPLITS)}); "
        f"prepare it with `python scripts/prepare_vtab.py {name} --root {root}` or point data.root at your copy"
    )


def read_split_file(task_dir: Path, split: str, num_classes: int) -> list[tuple[Path, int]]:
    """Parse ``<split>.txt``; every problem is reported with its file and line."""
    list_file = task_dir / f"{split}.txt"
    root = task_dir.resolve()
    entries = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
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


def load_split(
    task_dir: Path,
    split: str,
    num_classes: int,
    size: tuple[int, int],
    interpolation: str = "bicubic",
    workers: int = 4,
    progress: bool = True,
) -> SplitData:
    """Decode and resize every image of ``split`` into one uint8 tensor."""
    entries = read_split_file(task_dir, split, num_classes)
    resample = RESAMPLE.get(interpolation, Image.Resampling.BICUBIC)
    images = np.empty((len(entries), size[0], size[1], 3), dtype=np.uint8)

    def decode(index: int) -> None:
        images[index] = decode_image(entries[index][0], size, resample)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = pool.map(decode, range(len(entries)))
        for _ in tqdm(jobs, total=len(entries), desc=f"decode {task_dir.name}/{split}", disable=not progress or len(entries) < 2000,
                      leave=False):
            pass
    labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
    return SplitData(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels)
