"""BitFit (Ben Zaken, Ravfogel and Goldberg, ACL 2022): only the bias terms of the backbone train.

Every tensor named ``bias`` trains, where it already is; nothing is added, so the adapted model is the backbone
at init and the "merged" model is the backbone with its tuned biases. On a timm ViT those are the biases of the
patch embedding (``patch_embed.proj``), of each block's ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``, and of the final ``norm``: ``D + depth (2 D + 3 D + D + m + D) + D`` numbers for width
``D`` and MLP width ``m`` (102,912 on ViT-B/16; 0.10 M in V-PETL Bench).

Official code: the paper's ``benzakenelad/BitFit`` (``glue_evaluator.py``, ``BIAS_TERMS_DICT['all'] = 'bias'``:
every parameter whose name contains ``bias``, LayerNorm biases included) and, for ViTs, V-PETL Bench
(``ImageClassification/train/train_model_bitfit.py``, lines 165-171) and OSU-MLB/PETL_Vision
(``experiment/build_model.py``, line 31: ``TUNE_MODULES.append("bias")``), which select the same tensors on a timm ViT.
PEFT has no BitFit (its ``beft`` adds a new zero-initialised bias to chosen Linears only), so ``peft`` is the
paper's rule, which is the official one: the two conventions are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import AdapterConfig

PREFIX = "bias"


@dataclass
class BitFitConfig(AdapterConfig):
    pass


def backbone_biases(model: nn.Module) -> list[str]:
    """Names of the parameters BitFit trains: those with a dotted part starting with ``bias``, outside the head."""
    return [
        name
        for name, _ in model.named_parameters()
        if not name.startswith("head.") and any(part.startswith(PREFIX) for part in name.split("."))
    ]


def inject(model: nn.Module, config: BitFitConfig) -> None:
    """Nothing to inject: :func:`mark_trainable` unfreezes the biases (prefix ``bias``); only check there are some."""
    if getattr(model, "blocks", None) is None:
        raise TypeError(f"{type(model).__name__} has no .blocks: apply_adapter expects a timm VisionTransformer")
    if not backbone_biases(model):
        raise ValueError(f"adapter=bitfit: {type(model).__name__} has no bias outside its head: nothing would train")


register_adapter("bitfit", BitFitConfig, inject, prefix=PREFIX, mergeable=True)
