"""The model of a run: a timm backbone with a fresh head, the adapter injected, the rest frozen."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pvera_bench.adapters import apply_adapter, trainable_split
from pvera_bench.config import ADAPTER_QUIRKS
from pvera_bench.models.backbone import create_backbone
from pvera_bench.models.runtime import seed_everything


def quirks_in_force(cfg: DictConfig) -> list[str]:
    """The enabled quirks that change this run: an adapter's own quirks count only for that adapter."""
    return [
        quirk
        for quirk, on in cfg.quirks.items()
        if on and (quirk not in ADAPTER_QUIRKS or ADAPTER_QUIRKS[quirk][0] == cfg.adapter.name)
    ]


def adapter_hparams_with_quirks(cfg: DictConfig) -> dict:
    """The adapter's config values, with the fields that the enabled ``quirks`` of this adapter set."""
    hparams = OmegaConf.to_container(cfg.adapter, resolve=True)
    for quirk in quirks_in_force(cfg):
        if quirk in ADAPTER_QUIRKS:
            hparams[ADAPTER_QUIRKS[quirk][1]] = True
    return hparams


def build_model(cfg: DictConfig) -> nn.Module:
    """Backbone with a fresh head for the task, the adapter injected, everything else frozen."""
    model = create_backbone(cfg.backbone, cfg.dataset.num_classes, hub_pos_embed=cfg.quirks.hub_pos_embed)
    hparams = adapter_hparams_with_quirks(cfg)
    return apply_adapter(model, hparams.pop("name"), **hparams)


def seeded_model(cfg: DictConfig, device: torch.device, weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The model of a config built from the run seed (so a rebuild is identical), on ``device``.

    Args:
        weights: trainable weights to load over the fresh ones (e.g. those of the chosen grid point).
    """
    seed_everything(cfg.seed)
    model = build_model(cfg).to(device)
    if weights is not None:
        model.load_state_dict(weights, strict=False)
    if cfg.trainer.compile:
        model.compile()
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    adapter, head = trainable_split(model)
    return {
        "adapter_params": sum(p.numel() for p in adapter.values()),
        "head_params": sum(p.numel() for p in head.values()),
        "total_params": sum(p.numel() for p in model.parameters()),
    }
