"""Injection as functions, as PEFT does it: apply an adapter by name, freeze the rest, merge it, and ask what it is."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from pvera_bench.adapters.layers import AdaptedLayer
from pvera_bench.adapters.registry import (
    ADAPTERS,
    AdapterSpec,
    AppliedAdapter,
    adapter_config,
    set_applied_adapter,
)
from pvera_bench.adapters.sampling import adapter_dropouts


def mark_trainable(model: nn.Module, prefix: str | None) -> None:
    """Freeze everything except tensors whose name has a part starting with ``prefix``, and the head."""
    for name, param in model.named_parameters():
        parts = name.split(".")
        is_head = parts[0] == "head"
        is_adapter = prefix == "*" or (prefix is not None and any(part.startswith(prefix) for part in parts))
        param.requires_grad_(is_head or is_adapter)


def trainable_split(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """The trainable parameters, split into the adapter's (outside the head) and the classification head's."""
    adapter, head = {}, {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if name.startswith("head.") else adapter)[name] = param
    return adapter, head


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters outside the classification head."""
    return trainable_split(model)[0]


def head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return trainable_split(model)[1]


def apply_adapter(model: nn.Module, name: str, **hparams) -> nn.Module:
    """Inject adapter ``name`` into ``model`` in place and freeze all but the adapter and the head.

    Args:
        model: a timm ``VisionTransformer`` (anything with ``.blocks`` and ``.head``).
        name: a registered adapter name (see ``ADAPTERS``).
        **hparams: fields of the adapter's config dataclass.

    Returns:
        The same model; :func:`~pvera_bench.adapters.adapter_config` gives the validated config.
    """
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; registered: {', '.join(sorted(ADAPTERS))}")
    if (existing := adapter_config(model)) is not None:
        raise ValueError(f"model already has adapter {existing.name!r}; apply one adapter per model")
    spec = ADAPTERS[name]
    config = spec.config_cls(**{**hparams, "name": name})
    before = [*model.parameters(), *model.buffers()]  # held, so that no new tensor can take an old one's id
    spec.inject(model, config)
    place_new_tensors(model, before)
    mark_trainable(model, spec.prefix)
    set_applied_adapter(model, AppliedAdapter(config))
    return model


def place_new_tensors(model: nn.Module, before: list[torch.Tensor]) -> None:
    """Move the tensors that an injection added (those not in ``before``) to the device of the model's first
    parameter, floating ones to its dtype. Adapters create them on the CPU in the default dtype, so that their
    random draws are the same whatever the model's device."""
    old = {id(t) for t in before}
    reference = next((p for p in before if isinstance(p, nn.Parameter) and p.is_floating_point()), None)
    if reference is None:
        return
    placed: dict[int, torch.Tensor] = {}  # by the id of the tensor it replaces: shared tensors stay shared
    for module in model.modules():
        own = itertools.chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))
        for name, tensor in list(own):
            if id(tensor) in old:
                continue
            if id(tensor) not in placed:
                moved = tensor.detach().to(reference.device, dtype_like(tensor, reference))
                is_parameter = isinstance(tensor, nn.Parameter)
                placed[id(tensor)] = nn.Parameter(moved, tensor.requires_grad) if is_parameter else moved
            setattr(module, name, placed[id(tensor)])


def dtype_like(tensor: torch.Tensor, reference: torch.Tensor) -> torch.dtype:
    """The reference's dtype for a floating tensor; an integer or boolean tensor keeps its own."""
    return reference.dtype if tensor.is_floating_point() else tensor.dtype


def adapter_spec(model: nn.Module) -> AdapterSpec | None:
    """The registry entry of the adapter applied to ``model`` (None: none applied, or merged)."""
    config = adapter_config(model)
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
    config = adapter_config(model)
    if config is None:
        raise ValueError(
            "model has no adapter: call apply_adapter first (a copy of an adapted model carries its adapter when made "
            "with pvera_bench.adapters.copy_model, not copy.deepcopy)"
        )
    if not is_mergeable(model):
        raise ValueError(f"adapter {config.name!r} has no weight update to fold into the backbone and cannot be merged")
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, AdaptedLayer)]
    for name, module in wrapped:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, module.merged_layer())
    mark_trainable(model, None)
    set_applied_adapter(model, AppliedAdapter(config, merged=True))
    return model
