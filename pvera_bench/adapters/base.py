"""Adapter registry, target resolution and the helpers every adapter shares.

An adapter is one module file that defines a config dataclass, its layer(s) and an
``inject(model, config)`` function, and ends with one :func:`register_adapter` call.
Layers keep the frozen module they wrap as ``base_layer``; every trainable tensor an
adapter adds is an attribute named with the adapter's prefix (``lora_A``, ``vera_lambda_d``,
...), which is how :func:`mark_trainable` decides what trains. Each layer's ``forward`` is its
paper's equation in plain PyTorch; updates of q and v in timm's fused qkv output are placed
with :func:`spread_slices`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from torch import nn

QKV_NAMES = ("q", "k", "v")


class Convention(StrEnum):
    """How an adapter is initialised, scaled and structured; each adapter's docstring says what differs.

    ``official``: as the official PVeRA code (leofillioux/pvera) builds it, its bugs left out (those are
    ``quirks``); ``peft``: as Hugging Face PEFT builds it (the adapter's paper where PEFT has none).
    """

    official = "official"
    peft = "peft"


@dataclass
class AdapterConfig:
    """Fields every adapter has.

    Args:
        name: registry name of the adapter.
        lr: learning rate of the adapter's parameters; None uses ``trainer.lr``.
        convention: ``official`` (the official PVeRA code's initialisation and scales) or ``peft``.
    """

    name: str = ""
    lr: float | None = None
    convention: Convention = Convention.official

    def __post_init__(self) -> None:
        self.convention = Convention(self.convention)
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"adapter.lr must be positive, got {self.lr}")


@dataclass
class TargetedConfig(AdapterConfig):
    """An adapter that wraps Linear layers inside each transformer block.

    Args:
        targets: module paths inside a block, in timm's names (``attn.qkv``, ``attn.proj``,
            ``mlp.fc1``, ``mlp.fc2``).
        qkv_slices: for ``attn.qkv``, which of q, k, v get their own update (each slice is
            adapted separately, as the papers adapt separate projections); None adapts the
            fused qkv output as one layer.
    """

    targets: list[str] = field(default_factory=lambda: ["attn.qkv"])
    qkv_slices: list[str] | None = field(default_factory=lambda: ["q", "v"])

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.targets:
            raise ValueError("adapter.targets is empty: name at least one Linear, e.g. [attn.qkv]")
        if self.qkv_slices is not None:
            unknown = sorted(set(self.qkv_slices) - set(QKV_NAMES))
            if unknown or not self.qkv_slices or len(set(self.qkv_slices)) != len(self.qkv_slices):
                raise ValueError(f"adapter.qkv_slices must be distinct names from q, k, v; got {self.qkv_slices}")


@dataclass
class InputDropoutConfig(TargetedConfig):
    """Args:
    dropout: dropout on the adapter's input in training, and at test time too under ``sampling=mc`` (MC dropout).
    """

    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.dropout < 1:
            raise ValueError(f"adapter.dropout must be in [0, 1), got {self.dropout}")


def input_dropout(config: InputDropoutConfig) -> nn.Module:
    """The adapter's dropout on its input (an identity when ``dropout`` is 0)."""
    return nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()


@dataclass(frozen=True)
class AdapterSpec:
    """A registered adapter: how to configure and inject it, and what it is.

    Args:
        prefix: parameter names with a part starting with it train (with the head); None: only the
            head trains (linear probe); ``"*"``: the whole backbone trains.
        mergeable: :func:`merge_adapter` can fold it into the base weights.
        stochastic: it samples at training time, has a test-time :func:`sample_latents` mode and an
            :func:`adapter_loss`.
        identity_at_init: the conventions under which the adapted model computes exactly what the backbone
            does until it trains.
    """

    name: str
    config_cls: type[AdapterConfig]
    inject: Callable[[nn.Module, AdapterConfig], None]
    prefix: str | None
    mergeable: bool = False
    stochastic: bool = False
    identity_at_init: tuple[Convention, ...] = tuple(Convention)


ADAPTERS: dict[str, AdapterSpec] = {}


def register_adapter(
    name: str,
    config_cls: type[AdapterConfig],
    inject: Callable[[nn.Module, AdapterConfig], None],
    prefix: str | None,
    mergeable: bool = False,
    stochastic: bool = False,
    identity_at_init: tuple[Convention, ...] = tuple(Convention),
) -> None:
    """Make an adapter available by name to :func:`apply_adapter` and the ``adapter`` config group."""
    if name in ADAPTERS:
        raise ValueError(f"adapter {name!r} is registered twice")
    ADAPTERS[name] = AdapterSpec(name, config_cls, inject, prefix, mergeable, stochastic, identity_at_init)


@dataclass(frozen=True)
class Target:
    """One Linear to adapt: where it hangs and which output slices get their own update."""

    block: int
    path: str  # e.g. "attn.qkv"
    parent: nn.Module
    attr: str
    layer: nn.Linear
    slices: tuple[tuple[int, int], ...]  # (start, stop) rows of the output, each adapted separately


def find_targets(model: nn.Module, config: TargetedConfig) -> list[Target]:
    """Resolve ``config.targets`` in every block of a timm VisionTransformer."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} has no .blocks: apply_adapter expects a timm VisionTransformer")
    found = []
    for index, block in enumerate(blocks):
        for path in config.targets:
            parent_path, _, attr = path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            layer = getattr(parent, attr, None)
            if layer is None:
                raise ValueError(f"adapter target {path!r} does not exist in block {index} ({type(block).__name__})")
            if hasattr(layer, "base_layer"):
                raise ValueError(f"adapter target {path!r} in block {index} is already adapted")
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"adapter target {path!r} is a {type(layer).__name__}, not a Linear")
            found.append(Target(index, path, parent, attr, layer, output_slices(path, layer, config.qkv_slices)))
    return found


def output_slices(path: str, layer: nn.Linear, qkv_slices: list[str] | None) -> tuple[tuple[int, int], ...]:
    """Row ranges of ``layer``'s output that get separate updates (q and v of a fused qkv)."""
    if path.split(".")[-1] != "qkv" or qkv_slices is None:
        return ((0, layer.out_features),)
    width = layer.out_features // 3
    return tuple((QKV_NAMES.index(s) * width, (QKV_NAMES.index(s) + 1) * width) for s in qkv_slices)


def spread_slices(
    values: torch.Tensor, slices: tuple[tuple[int, int], ...], width: int, fill: float = 0.0
) -> torch.Tensor:
    """A ``(..., width)`` tensor with ``values[..., i, :]`` in columns ``slices[i]`` and ``fill`` in the others."""
    pieces, cursor = [], 0
    for (start, stop), value in sorted(zip(slices, values.unbind(-2), strict=True), key=lambda pair: pair[0]):
        pieces += [values.new_full((*values.shape[:-2], start - cursor), fill), value]
        cursor = stop
    pieces.append(values.new_full((*values.shape[:-2], width - cursor), fill))
    return torch.cat(pieces, dim=-1)


def take_slices(values: torch.Tensor, slices: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """The columns ``slices[i]`` of ``values`` as ``(..., n_slices, width)``: the inverse of :func:`spread_slices`."""
    return torch.stack([values[..., start:stop] for start, stop in slices], dim=-2)


class SlicedLinear(nn.Module):
    """Base of layers that add a separate update to some output slices of a frozen Linear (q and v of a qkv).

    Subclasses compute the updates as ``(..., n_slices, slice_width)`` and add them to the base output
    with :meth:`add_to_slices`; ``delta_weight()`` is the equivalent weight update, ``(n_slices, slice_width, in)``.
    """

    def __init__(self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        widths = {stop - start for start, stop in slices}
        if len(widths) != 1:
            raise ValueError(f"all adapted slices of a layer must have the same width, got {slices}")
        self.base_layer = base_layer
        self.slices = slices
        self.slice_width = widths.pop()
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features

    def add_to_slices(self, out: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        """``out`` plus ``updates[..., i, :]`` on output slice i, in ``out``'s dtype (autocast's, if on)."""
        return out + spread_slices(updates, self.slices, self.out_features).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def merged_layer(self) -> nn.Linear:
        """The base Linear with the update folded into its weight."""
        layer = self.base_layer
        with torch.no_grad():
            update = self.delta_weight().to(layer.weight.dtype)
            for (start, stop), rows in zip(self.slices, update, strict=True):
                layer.weight[start:stop] += rows
        return layer


def mark_trainable(model: nn.Module, prefix: str | None) -> None:
    """Freeze everything except tensors whose name has a part starting with ``prefix``, and the head."""
    for name, param in model.named_parameters():
        parts = name.split(".")
        is_head = parts[0] == "head"
        is_adapter = prefix == "*" or (prefix is not None and any(part.startswith(prefix) for part in parts))
        param.requires_grad_(is_head or is_adapter)


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters outside the classification head."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")}


def head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad and n.startswith("head.")}


# The latent a stochastic layer uses at test time: mu, one draw, mu + sigma, or the mean of
# ``sample_count`` draws taken inside the layer (the official PVeRA code's N-sample mode).
SAMPLE_MODES = ("mean", "random", "fixed", "mc_layer")


class StochasticLayer(nn.Module):
    """A layer with a sampled latent: training always samples; at test time ``sample_mode`` chooses.

    Subclasses keep what their last training forward needs for :meth:`kl` (an eval forward keeps nothing).
    """

    sample_mode: str = "mean"
    sample_count: int = 1  # draws averaged inside the layer in ``mc_layer`` mode

    def kl(self) -> torch.Tensor | None:
        """The regularisation term of the last training forward (None when there was none)."""
        raise NotImplementedError


def adapter_loss(model: nn.Module) -> torch.Tensor | None:
    """The sum of every stochastic layer's KL term from the last training forward (None: no such term)."""
    terms = [kl for m in model.modules() if isinstance(m, StochasticLayer) and (kl := m.kl()) is not None]
    return torch.stack(terms).sum() if terms else None


@contextlib.contextmanager
def sample_latents(model: nn.Module, mode: str, count: int = 1) -> Iterator[nn.Module]:
    """Within the block, every stochastic layer of ``model`` uses test-time latent ``mode`` (averaging
    ``count`` draws in ``mc_layer`` mode); then it is restored."""
    if mode not in SAMPLE_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLE_MODES}")
    layers = [m for m in model.modules() if isinstance(m, StochasticLayer)]
    previous = [(layer.sample_mode, layer.sample_count) for layer in layers]
    for layer in layers:
        layer.sample_mode, layer.sample_count = mode, count
    try:
        yield model
    finally:
        for layer, (mode_before, count_before) in zip(layers, previous, strict=True):
            layer.sample_mode, layer.sample_count = mode_before, count_before


def adapter_dropouts(model: nn.Module) -> list[nn.Dropout]:
    """The dropout layers of the model's adapters (children of the layers that wrap a ``base_layer``)."""
    wrappers = [m for m in model.modules() if hasattr(m, "base_layer")]
    return [child for m in wrappers for child in m.children() if isinstance(child, nn.Dropout)]


@contextlib.contextmanager
def mc_dropout(model: nn.Module, active: bool) -> Iterator[nn.Module]:
    """Within the block, when ``active``, the adapters' dropout layers drop in eval mode too (MC dropout)."""
    layers = adapter_dropouts(model) if active else []
    previous = [layer.training for layer in layers]
    for layer in layers:
        layer.train()
    try:
        yield model
    finally:
        for layer, training in zip(layers, previous, strict=True):
            layer.train(training)


def kaiming_uniform(shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Kaiming-uniform (gain sqrt(2), fan_in = shape[-1]) on the CPU, from ``generator`` (None: the global RNG)."""
    bound = (6.0 / shape[-1]) ** 0.5
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)
