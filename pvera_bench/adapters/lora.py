"""LoRA (Hu et al., ICLR 2022): ``W x + (alpha / r) * B A x`` with A random and B zero at init.

Conventions: ``official`` (leofillioux/pvera, ``models/adapters/lora.py``):
``alpha = 16``, ``A ~ N(0, 1/r)``; ``peft`` (PEFT's ``LoraConfig``): ``alpha = 8``, A Kaiming-uniform
with ``a = sqrt(5)`` as ``nn.Linear``. The official code also starts every block from the same A
(``models/models.py``: ``local_seed(self.seed)`` re-entered for every block, line 69): ``same_a_every_block``,
off unless ``quirks.lora_same_a_every_block``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pvera_bench.adapters.layers import InputDropoutConfig, SlicedLinear, Target, find_targets, input_dropout
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import Convention


@dataclass
class LoraConfig(InputDropoutConfig):
    """Args:
    r: rank of the update.
    alpha: the update is scaled by ``alpha / r``; None: 16 (``official``) or 8 (``peft``).
    same_a_every_block: every block starts from the same A (the official code's bug E9).
    """

    r: int = 8
    alpha: float | None = None
    same_a_every_block: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha is None:
            self.alpha = 8.0 if self.convention == Convention.peft else 16.0
        if self.r < 1:
            raise ValueError(f"adapter.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"adapter.alpha must be positive, got {self.alpha}")


class LoraLinear(SlicedLinear):
    """A frozen Linear plus one rank-r update per output slice."""

    def __init__(self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...], config: LoraConfig) -> None:
        super().__init__(base_layer, slices)
        n, r = len(slices), config.r
        self.scaling = config.alpha / r
        self.lora_A = nn.Parameter(torch.empty(n, r, self.in_features))
        self.lora_B = nn.Parameter(torch.zeros(n, self.slice_width, r))
        if config.convention == Convention.official:
            nn.init.normal_(self.lora_A, std=r**-0.5)
        else:
            for a in self.lora_A:  # as nn.Linear and the LoRA reference code: kaiming-uniform, a = sqrt(5)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_dropout = input_dropout(config)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The down- and up-projections of every slice, ``(n_slices, r, in)`` and ``(n_slices, width, r)``."""
        return self.lora_A, self.lora_B

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """``(alpha / r) B_i A_i dropout(x)`` for every slice i, ``(..., n_slices, width)``."""
        x = self.lora_dropout(x)
        per_slice = [F.linear(F.linear(x, down), up) for down, up in zip(*self.factors(), strict=True)]
        return self.scaling * torch.stack(per_slice, dim=-2)

    def adapt_output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``W x + (alpha / r) B A x`` on each adapted slice, ``out`` being ``W x``."""
        return self.add_to_slices(out, self.update(x))

    def delta_weight(self) -> torch.Tensor:
        down, up = self.factors()
        return self.scaling * (up @ down)


def low_rank_targets(model: nn.Module, config: LoraConfig) -> list[Target]:
    """The targets, after checking that the rank fits each of them (a LoRA rank cannot exceed min(in, out))."""
    targets = find_targets(model, config)
    for t in targets:
        width = min(t.layer.in_features, *(stop - start for start, stop in t.slices))
        if config.r > width:
            raise ValueError(f"adapter.r={config.r} exceeds the width {width} of {t.path}; use adapter.r <= {width}")
    return targets


def inject_low_rank(model: nn.Module, config: LoraConfig, layer_cls: type[LoraLinear]) -> None:
    """Wrap every target with ``layer_cls``; with ``same_a_every_block`` each block's draws repeat the first's."""
    first_block_rng = torch.get_rng_state()
    for t in low_rank_targets(model, config):
        if config.same_a_every_block and t.path == config.targets[0]:  # a block starts
            torch.set_rng_state(first_block_rng)
        setattr(t.parent, t.attr, layer_cls(t.layer, t.slices, config))


def inject(model: nn.Module, config: LoraConfig) -> None:
    inject_low_rank(model, config, LoraLinear)


register_adapter("lora", LoraConfig, inject, mergeable=True, prefix="lora_")
