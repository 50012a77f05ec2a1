"""Build VTAB-1k task folders from TFDS with task_adaptation's split definitions.

Each task becomes ``<root>/<task>/`` with lossless PNGs under ``images/<split>/``, the four
split files and ``manifest.json`` (TFDS name and version, split specs, counts, checksums).
Preparation is idempotent (a task with a manifest is skipped) and resumable (finished splits
are kept, and images already written are not written again).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pvera_bench.config import DatasetConfig, TfdsSource
from pvera_bench.core.errors import UserError
from pvera_bench.core.files import write_atomically, write_json
from pvera_bench.data.labels import EXTRACTORS

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = ".prepare-state.json"
SOURCE_SPLITS = ("train800", "val200", "test")
MOCK_EXAMPLES = 2000  # per TFDS split; the smallest count for which every 1k split spec is complete
MOCK_TEST_EXAMPLES = 100  # mock test splits are cut to this many images (random data: only the plumbing matters)
PERCENT_TOKEN = re.compile(r"p(\d+)")


@dataclass(frozen=True)
class SplitSlice:
    """Examples ``start:stop`` of a TFDS split."""

    split: str
    start: int
    stop: int

    def __str__(self) -> str:
        return f"{self.split}[{self.start}:{self.stop}]"


def resolve_split(spec: str, split_size: Callable[[str], int]) -> SplitSlice:
    """Turn a split spec into absolute example indices.

    Bounds are integers, ``pNN`` (``NN * n // 100``, task_adaptation's rounding), sums such
    as ``p60+p20`` or ``p90+200``, or TFDS percentages ``NN%`` (rounded to the closest
    example, as TFDS does); an empty bound is the start or the end of the split.

    >>> str(resolve_split("train[p90:p90+200]", lambda split: 50000))
    'train[45000:45200]'
    """
    match = re.fullmatch(r"(\w+)(?:\[([^:\]]*):([^:\]]*)\])?", spec.replace(" ", ""))
    if match is None:
        raise ValueError(f"bad split spec {spec!r}: expected split or split[start:stop]")
    split, start, stop = match.groups()
    size = split_size(split)

    def bound(text: str | None, default: int) -> int:
        if not text:
            return default
        if text.endswith("%"):
            return int(round(float(text[:-1]) * size / 100))
        return sum(
            int(PERCENT_TOKEN.sub(lambda m: str(int(m.group(1)) * size // 100), term)) for term in text.split("+")
        )

    return SplitSlice(split, bound(start, 0), min(bound(stop, size), size))


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG of an (H, W, C) uint8 array; single-channel images stay grey."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def import_tfds(mock: bool):
    """tensorflow_datasets, and TensorFlow too when real data must be downloaded and prepared."""
    import tensorflow_datasets as tfds

    if not mock:
        try:
            import tensorflow  # noqa: F401  (TFDS needs it to download and prepare)
        except ImportError:
            raise UserError(
                "preparing real VTAB-1k data needs TensorFlow: pip install -e '.[data]' "
                "(or run with --mock to check the setup offline)"
            ) from None
    return tfds


class TaskWriter:
    """Writes one task folder from a TFDS source."""

    def __init__(
        self,
        dataset: DatasetConfig,
        root: Path,
        data_dir: Path | None,
        mock: bool,
        workers: int = 8,
        progress: bool = True,
    ) -> None:
        if dataset.tfds is None:
            raise UserError(f"dataset {dataset.name} has no TFDS source (dataset.tfds is null)")
        self.dataset = dataset
        self.source: TfdsSource = dataset.tfds
        self.task_dir = root / dataset.name
        self.data_dir = str(data_dir) if data_dir else None
        self.mock = mock
        self.workers = workers
        self.progress = progress
        self.extract = EXTRACTORS[self.source.extract]

    def prepare(self) -> bool:
        """Build the task; False when it was already complete."""
        if (self.task_dir / MANIFEST).is_file():
            return False
        tfds = import_tfds(self.mock)
        self.task_dir.mkdir(parents=True, exist_ok=True)
        mocked = (
            tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE)
            if self.mock
            else contextlib.nullcontext()
        )
        with mocked:
            builder = tfds.builder(self.source.name, data_dir=self.data_dir)
            if not self.mock:
                self.download(builder)
            splits = self.write_splits(tfds)
        self.write_manifest(str(builder.info.version), splits)
        return True

    def manual_dir(self) -> Path:
        data_dir = self.data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
        return Path(data_dir).expanduser() / "downloads" / "manual"

    def download(self, builder) -> None:
        try:
            builder.download_and_prepare(file_format="array_record")
        except AssertionError as error:  # TFDS's way of saying that the manual download is missing
            if "manual" not in str(error).lower():
                raise
            what = self.source.manual or " ".join(str(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split())
            raise UserError(
                f"{self.dataset.name} needs a manual download: {what}; put it in {self.manual_dir()} and run this again"
            ) from None

    def split_size(self, tfds, split: str) -> int:
        return len(tfds.data_source(self.source.name, split=split, data_dir=self.data_dir))

    def write_splits(self, tfds) -> dict:
        """Write the three source splits (keeping finished ones) and train800val200; returns their records."""
        state_path = self.task_dir / STATE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {"splits": {}}
        for split in SOURCE_SPLITS:
            if split in state["splits"] and (self.task_dir / f"{split}.txt").is_file():
                log.info("%s/%s: already written, kept", self.dataset.name, split)
                continue
            spec = getattr(self.source, split)
            resolved = resolve_split(spec, lambda name: self.split_size(tfds, name))
            record = self.write_split(tfds, split, resolved)
            state["splits"][split] = {"spec": spec, "resolved": str(resolved), **record}
            write_json(state_path, state)
        lines = [
            *(self.task_dir / "train800.txt").read_text().splitlines(),
            *(self.task_dir / "val200.txt").read_text().splitlines(),
        ]
        write_atomically(self.task_dir / "train800val200.txt", ("\n".join(lines) + "\n").encode())
        return state["splits"]

    def write_split(self, tfds, split: str, resolved: SplitSlice) -> dict:
        source = tfds.data_source(self.source.name, split=resolved.split, data_dir=self.data_dir)
        count = resolved.stop - resolved.start
        if self.mock and split == "test":
            count = min(count, MOCK_TEST_EXAMPLES)
        folder = self.task_dir / "images" / split
        folder.mkdir(parents=True, exist_ok=True)

        def write(index: int) -> tuple[str, int, str]:
            image, label = self.extract(source[resolved.start + index])
            if self.mock:  # random mock objects can fall outside the task's classes
                label %= self.dataset.num_classes
            elif not 0 <= label < self.dataset.num_classes:
                classes = self.dataset.num_classes
                raise ValueError(f"{self.dataset.name}/{split}[{index}]: label {label} outside [0, {classes})")
            relative = f"images/{split}/{index:06d}.png"
            path = self.task_dir / relative
            if path.is_file():  # resumed: the image was written (atomically) before the interruption
                payload = path.read_bytes()
            else:
                payload = encode_png(image)
                write_atomically(path, payload)
            return relative, label, hashlib.sha256(payload).hexdigest()

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            rows = list(
                tqdm(
                    pool.map(write, range(count)),
                    total=count,
                    desc=f"{self.dataset.name}/{split}",
                    disable=not self.progress,
                    leave=False,
                )
            )
        digest = hashlib.sha256()
        for relative, label, file_hash in rows:
            digest.update(f"{relative} {label} {file_hash}\n".encode())
        lines = "".join(f"{relative} {label}\n" for relative, label, _ in rows)
        write_atomically(self.task_dir / f"{split}.txt", lines.encode())
        return {"count": count, "sha256": digest.hexdigest()}

    def write_manifest(self, version: str, splits: dict) -> None:
        combined = splits["train800"]["count"] + splits["val200"]["count"]
        splits = {**splits, "train800val200": {"spec": "train800 + val200", "count": combined}}
        manifest = {
            "task": self.dataset.name,
            "num_classes": self.dataset.num_classes,
            "tfds_name": self.source.name,
            "tfds_version": version,
            "tensorflow_datasets": metadata.version("tensorflow-datasets"),
            "mock": self.mock,
            "extract": self.source.extract,
            "image_format": "png",
            "splits": splits,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_json(self.task_dir / MANIFEST, manifest)
        (self.task_dir / STATE).unlink(missing_ok=True)
