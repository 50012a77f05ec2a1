"""Backbones from timm by name, with pretrained weights from the hub or a local file."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config
from torch import nn

from pvera_bench.config import BackboneConfig
from pvera_bench.core.errors import UserError

log = logging.getLogger(__name__)

HUB_POS_EMBED_OFFSET = 0.1  # DINOv2's torch.hub model: interpolate_offset


def create_backbone(config: BackboneConfig, num_classes: int, hub_pos_embed: bool = False) -> nn.Module:
    """Create ``config.name`` with a fresh ``num_classes`` head.

    Weights come from ``config.weights`` when given (any format timm reads: .safetensors,
    .pth, .npz), passed through timm's ``pretrained_cfg_overlay`` so that timm's own
    filtering (position-embedding resampling, head removal) applies; otherwise from the
    Hugging Face hub when ``config.pretrained``. With ``hub_pos_embed`` the position embeddings
    are resized to ``config.img_size`` as DINOv2's torch.hub model resizes them (see
    :func:`resize_pos_embed_as_hub`) instead of timm's way.
    """
    kwargs = dict(config.model_kwargs)
    if config.img_size is not None and not hub_pos_embed:
        kwargs["img_size"] = config.img_size
    overlay = None
    if config.weights:
        weights = Path(config.weights).expanduser().resolve()
        if not weights.is_file():
            raise UserError(f"backbone.weights={config.weights}: no such file")
        overlay = {"file": str(weights)}
    pretrained = config.pretrained or overlay is not None
    try:
        with warnings.catch_warnings():  # torch's note on an unusual pickle protocol: not the user's business
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model = timm.create_model(
                config.name, pretrained=pretrained, pretrained_cfg_overlay=overlay, num_classes=num_classes, **kwargs
            )
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise UserError(f"backbone.name={config.name}: timm has no such model (see timm.list_models())") from error
        if overlay is not None and "weights_only" in str(error):
            raise UserError(
                f"backbone.weights={config.weights} holds pickled objects other than tensors; refusing to unpickle "
                "it (save the state dict with safetensors, or with torch.save of plain tensors)"
            ) from None
        if overlay is not None:
            first_line = str(error).splitlines()[0]
            raise UserError(f"backbone.weights={config.weights} does not fit {config.name}: {first_line}") from error
        raise
    except TypeError as error:  # a constructor argument timm's model does not take
        raise UserError(
            f"backbone.model_kwargs={dict(config.model_kwargs)}: timm's {config.name} refuses them ({error}); "
            "pass only arguments of its constructor"
        ) from None
    except (OSError, ValueError) as error:  # hub unreachable or offline, file unreadable
        pretrained_cfg = timm.models.get_pretrained_cfg(config.name)
        hub_id = getattr(pretrained_cfg, "hf_hub_id", None) or f"timm/{config.name}"
        raise UserError(
            f"cannot get pretrained weights for {config.name} ({type(error).__name__}); on a machine with network "
            f"run `hf download {hub_id} model.safetensors --local-dir weights/` and pass "
            "backbone.weights=weights/model.safetensors, or run with backbone.pretrained=false"
        ) from error
    if not pretrained:
        log.warning("backbone %s is randomly initialised (backbone.pretrained=false)", config.name)
    if hub_pos_embed and config.img_size is not None and model.patch_embed.img_size != (config.img_size,) * 2:
        native = model.pos_embed.detach().clone()
        model.set_input_size(img_size=(config.img_size, config.img_size))
        with torch.no_grad():
            model.pos_embed.copy_(resize_pos_embed_as_hub(native, model.patch_embed.grid_size, model.num_prefix_tokens))
    return model


def resize_pos_embed_as_hub(pos_embed: torch.Tensor, grid: tuple[int, int], prefix_tokens: int) -> torch.Tensor:
    """Position embeddings for a ``grid`` of patches as DINOv2's torch.hub model computes them at every forward.

    Bicubic, no antialias, with ``scale_factor = (grid + 0.1) / old_grid`` rather than the target size, so the
    sampling positions are shifted (facebookresearch/dinov2 ``dinov2/models/vision_transformer.py``,
    ``interpolate_pos_encoding``).
    The backbone is frozen, so resizing once equals resizing at every forward. (The hub model leaves the
    embeddings as they are at their native grid; :func:`create_backbone` does not call this there.)
    """
    prefix, patches = pos_embed[:, :prefix_tokens], pos_embed[:, prefix_tokens:]
    old = int(round(patches.shape[1] ** 0.5))
    square = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    scale = tuple((size + HUB_POS_EMBED_OFFSET) / old for size in grid)
    resized = F.interpolate(square, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(resized.shape[-2:]) != tuple(grid):
        raise ValueError(f"hub position-embedding resize gave a {tuple(resized.shape[-2:])} grid, expected {grid}")
    return torch.cat([prefix, resized.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)], dim=1)


@contextlib.contextmanager
def random_weights_expected() -> Iterator[None]:
    """Within the block, building a randomly initialised backbone logs no warning (its structure is all that is
    needed: parameter counts, an export)."""
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def input_spec(model: nn.Module) -> dict:
    """Input resolution, normalisation and resize interpolation of a timm model."""
    data_config = resolve_model_data_config(model)
    height, width = model.patch_embed.img_size
    return {
        "size": (int(height), int(width)),
        "mean": tuple(data_config["mean"]),
        "std": tuple(data_config["std"]),
        "interpolation": data_config["interpolation"],
    }
