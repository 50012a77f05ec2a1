"""A run's predictions on disk: ``RunFiles(result).predictions`` beside its result JSON.

Per split (``test``, and ``val`` when the protocol validates): the labels (int64), the class
probabilities (float32, so metrics recomputed from the file equal the run's) and, for
``sampling=mc``, every pass's probabilities (float16, the bulk of the file). Tables and later
metrics read these files; nothing is retrained.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from pvera_bench.core.errors import UserError
from pvera_bench.core.files import write_atomically
from pvera_bench.evaluation.predict import Predictions


def write_predictions(path: Path, splits: dict[str, Predictions], metadata: dict[str, str]) -> None:
    """Write every split's predictions atomically, with ``metadata`` (e.g. the sampling mode) in the header."""
    tensors = {}
    for split, predictions in splits.items():
        tensors[f"{split}/labels"] = predictions.labels.to(torch.int64).contiguous()
        tensors[f"{split}/probs"] = predictions.probs.float().contiguous()
        if predictions.per_pass is not None:
            tensors[f"{split}/per_pass"] = predictions.per_pass.half().contiguous()
    write_atomically(path, save(tensors, metadata=metadata))


def read_predictions(path: Path) -> dict[str, Predictions]:
    """The predictions of every split in a file written by :func:`write_predictions`."""
    try:
        tensors = load(path.read_bytes())
    except (OSError, SafetensorError) as error:
        raise UserError(f"{path}: not a readable predictions file ({error}); delete it or rerun the run") from None
    splits = sorted({name.split("/")[0] for name in tensors})
    return {
        split: Predictions(tensors[f"{split}/labels"], tensors[f"{split}/probs"], tensors.get(f"{split}/per_pass"))
        for split in splits
    }
