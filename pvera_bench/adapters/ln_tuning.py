"""LayerNorm tuning: only the LayerNorms' affine weights and biases train (the "LayerNorm" / "LN-tune" baseline
of OSU-MLB/PETL_Vision and V-PETL Bench; PEFT's ``ln_tuning``, after Zhao et al., ICLR 2024, arXiv 2312.11420).

``LN(x) = w ⊙ (x - mean) / std + b`` with ``w`` and ``b`` trained where they are: each block's ``norm1`` and
``norm2`` and the final ``norm``, ``(4 depth + 2) D`` numbers for width ``D`` (38,400 on ViT-B/16). Nothing is
added, so the model is the backbone at init and the "merged" model is the backbone with its tuned norms.

Official code: OSU-MLB/PETL_Vision ``experiment/build_model.py`` (line 34, ``TUNE_MODULES.append('norm')``) and V-PETL
Bench ``ImageClassification/train/train_model_lntune.py`` (lines 164-169): every parameter whose name contains
``norm``. Here a parameter trains when a dotted part of its name starts with ``norm``: the same tensors on ViT-B/16
and DINOv2 (and ``norm_pre`` / ``patch_embed.norm`` where timm makes them LayerNorms); ``q_norm`` / ``k_norm``,
which that substring match would also catch, stay frozen, and a model whose final norm is a ``fc_norm`` after
average pooling (its ``norm`` is an Identity) is refused.

``peft`` (``src/peft/tuners/ln_tuning``) wraps each target norm in an ``LNTuningLayer`` that trains a deep copy
of it and keeps the original to unmerge; with no ViT default, its targets here are those of its Llama default
(the norms before attention and MLP, and the final one). That copy starts equal to the norm and computes the
same function, so the two conventions train the same numbers the same way: they are the same here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import AdapterConfig

PREFIX = "norm"
BLOCK_NORMS = ("norm1", "norm2")


@dataclass
class LnTuningConfig(AdapterConfig):
    pass


def tuned_norms(model: nn.Module) -> dict[str, nn.Module]:
    """Each block's ``norm1`` and ``norm2`` and the final ``norm``, by module path."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} has no .blocks: apply_adapter expects a timm VisionTransformer")
    norms = {f"blocks.{i}.{attr}": getattr(block, attr, None) for i, block in enumerate(blocks) for attr in BLOCK_NORMS}
    norms["norm"] = getattr(model, "norm", None)
    return norms


def inject(model: nn.Module, config: LnTuningConfig) -> None:
    """Nothing to inject: :func:`mark_trainable` unfreezes the norms (prefix ``norm``); check they are LayerNorms
    with an affine transform to tune."""
    for path, norm in tuned_norms(model).items():
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None:
            kind = type(norm).__name__ if norm is not None else "missing"
            raise ValueError(f"adapter=ln_tuning: {path} is {kind}, not a LayerNorm with an affine weight to tune")


register_adapter("ln_tuning", LnTuningConfig, inject, prefix=PREFIX, mergeable=True)
