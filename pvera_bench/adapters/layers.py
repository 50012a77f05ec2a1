"""What adapted layers share: the :class:`AdaptedLayer` contract, target resolution in a timm ViT's blocks, the
q/k/v slices of a fused qkv, and the configs of adapters that wrap Linears.

An adapted layer keeps the frozen module it wraps as ``base_layer``; every trainable tensor an adapter adds is an
attribute named with the adapter's prefix (``lora_A``, ``vera_lambda_d``, ...), which is how
:func:`~pvera_bench.adapters.mark_trainable` decides what trains. Each layer's ``forward`` is its paper's equation
in plain PyTorch; updates of q and v in timm's fused qkv output are placed with :func:`spread_slices`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pvera_bench.config import AdapterConfig

QKV_NAMES = ("q", "k", "v")


class AdaptedLayer(nn.Module):
    """A frozen module wrapped by an adapter: ``base_layer`` is the original, and the adapter changes what it
    reads, what it returns, or both: ``forward(x) = adapt_output(x, base_layer(adapt_input(x)))``.

    Written so, a packed trunk (:mod:`pvera_bench.models.packing`) runs the frozen ``base_layer`` once for the
    adapters of several models. A layer whose equation does not split there (DoRA rescales the frozen weight
    itself) overrides ``forward`` instead, and then runs whole for each model. The layers of mergeable adapters
    implement :meth:`merged_layer`.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.adapt_output(x, self.base_layer(self.adapt_input(x), *args, **kwargs))

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the base layer reads instead of ``x`` (``x`` itself unless the adapter changes it)."""
        return x

    def adapt_output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The layer's output, from its input ``x`` and the base layer's output ``out`` (``out`` unless changed)."""
        return out

    def merged_layer(self) -> nn.Module:
        """The base layer with the adapter folded into its weights."""
        raise NotImplementedError(f"{type(self).__name__} cannot be folded into its base layer")


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
        check_dropout(self.dropout)


def check_dropout(dropout: float) -> None:
    """The range check of an adapter's ``dropout`` field."""
    if not 0 <= dropout < 1:
        raise ValueError(f"adapter.dropout must be in [0, 1), got {dropout}")


def dropout_layer(dropout: float) -> nn.Module:
    """An adapter's dropout: an identity when ``dropout`` is 0, so that MC dropout finds nothing to turn on."""
    return nn.Dropout(dropout) if dropout > 0 else nn.Identity()


def input_dropout(config: InputDropoutConfig) -> nn.Module:
    """The adapter's dropout on its input (an identity when ``dropout`` is 0)."""
    return dropout_layer(config.dropout)


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
            if isinstance(layer, AdaptedLayer):
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


class SlicedLinear(AdaptedLayer):
    """Base of layers that add a separate update to some output slices of a frozen Linear (q and v of a qkv).

    Subclasses compute the updates as ``(..., n_slices, slice_width)`` and add them to the base output
    with :meth:`add_to_slices`; ``delta_weight()`` is the equivalent weight update, ``(n_slices, slice_width, in)``.
    """

    def __init__(self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...]) -> None:
        super().__init__(base_layer)
        widths = {stop - start for start, stop in slices}
        if len(widths) != 1:
            raise ValueError(f"all adapted slices of a layer must have the same width, got {slices}")
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


def kaiming_uniform(shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Kaiming-uniform (gain sqrt(2), fan_in = shape[-1]) on the CPU, from ``generator`` (None: the global RNG)."""
    bound = (6.0 / shape[-1]) ** 0.5
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)
