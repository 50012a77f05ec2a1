"""Parameter-efficient adapters for timm VisionTransformers, registered by name.

    >>> import timm
    >>> from pvera_bench.adapters import apply_adapter, merge_adapter
    >>> model = timm.create_model("vit_base_patch16_224", num_classes=10)
    >>> apply_adapter(model, "pvera", r=256)       # in place; returns the model
    >>> merge_adapter(model.eval())                 # fold the update into the weights

Every module in this package except ``base`` is an adapter and registers itself on import.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import asdict

from torch import nn

from pvera_bench.adapters.base import (
    ADAPTERS,
    AdapterConfig,
    AdapterSpec,
    adapter_dropouts,
    adapter_loss,
    adapter_parameters,
    head_parameters,
    mark_trainable,
    mc_dropout,
    sample_latents,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "adapter_loss",
    "adapter_parameters",
    "apply_adapter",
    "head_parameters",
    "is_mergeable",
    "is_stochastic",
    "load_adapter",
    "mc_dropout",
    "merge_adapter",
    "samples_at_test",
    "sample_latents",
]


def apply_adapter(model: nn.Module, name: str, **hparams) -> nn.Module:
    """Inject adapter ``name`` into ``model`` in place and freeze all but the adapter and the head.

    Args:
        model: a timm ``VisionTransformer`` (anything with ``.blocks`` and ``.head``).
        name: a registered adapter name (see ``ADAPTERS``).
        **hparams: fields of the adapter's config dataclass.

    Returns:
        The same model, with ``model.adapter_config`` holding the validated config.
    """
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; registered: {', '.join(sorted(ADAPTERS))}")
    if getattr(model, "adapter_config", None) is not None:
        raise ValueError(f"model already has adapter {model.adapter_config.name!r}; apply one adapter per model")
    spec = ADAPTERS[name]
    config = spec.config_cls(**{**hparams, "name": name})
    spec.inject(model, config)
    mark_trainable(model, spec.prefix)
    model.adapter_config = config
    return model


def load_adapter(model: nn.Module, path, verify_backbone: bool = True) -> nn.Module:
    """Apply the adapter a run saved (``<result>.adapter.safetensors``) to a fresh timm ``model`` and load its
    trained tensors and head; see :func:`pvera_bench.artefacts.load_adapter`."""
    from pvera_bench.artefacts import load_adapter as load  # the artefacts module imports this package

    return load(model, path, verify_backbone=verify_backbone)


def adapter_spec(model: nn.Module) -> AdapterSpec | None:
    """The registry entry of the adapter applied to ``model`` (None: none applied, or merged)."""
    config = getattr(model, "adapter_config", None)
    return None if config is None else ADAPTERS[config.name]


def is_mergeable(model: nn.Module) -> bool:
    """Whether :func:`merge_adapter` can fold this model's adapter into its weights."""
    spec = adapter_spec(model)
    return spec is not None and spec.mergeable


def is_stochastic(model: nn.Module) -> bool:
    """Whether this model's adapter samples (a test-time ``sampling`` mode and an ``adapter_loss``)."""
    spec = adapter_spec(model)
    return spec is not None and spec.stochastic


def samples_at_test(model: nn.Module, mode: str) -> bool:
    """Whether the model's test predictions under sampling ``mode`` are random: a stochastic adapter outside
    ``mean`` mode, or (``mc`` mode) an adapter with dropout, which then stays on (MC dropout)."""
    return (mode != "mean" and is_stochastic(model)) or (mode == "mc" and bool(adapter_dropouts(model)))


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold every adapter update into its base weight and unwrap it; inference then costs nothing extra.

    PVeRA merges its mean-latent update, i.e. the merged model predicts as ``sampling=mean``.
    """
    config = getattr(model, "adapter_config", None)
    if config is None:
        raise ValueError("model has no adapter: call apply_adapter first")
    if not is_mergeable(model):
        raise ValueError(f"adapter {config.name!r} has no weight update to fold into the backbone and cannot be merged")
    wrapped = [(name, m) for name, m in model.named_modules() if hasattr(m, "base_layer")]
    for name, module in wrapped:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, module.merged_layer())
    mark_trainable(model, None)
    model.adapter_config = None
    model.merged_adapter_config = config
    return model


def adapter_hparams(config: AdapterConfig) -> dict:
    """The config's fields without its name, as passed to :func:`apply_adapter`."""
    return {k: v for k, v in asdict(config).items() if k != "name"}
