"""Packing: models that share a frozen backbone run as one, model i on chunk i of the batch.

:func:`pack_models` returns a *trunk*: the first model's module tree, sharing every tensor with it, in which
each *site* is a :class:`PackedSite` that applies model i's module to chunk i of its input. A site is a
module that differs between the models: an adapter's layer (``AdaptedLayer``) or a module that owns trainable
parameters itself (the head, a trained bias or LayerNorm). Everything between the sites is frozen and runs
once on the whole batch. This is exact when the frozen modules treat the images of a batch independently, as
a ViT's do (LayerNorm per token, attention within an image, no batch statistics).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from typing import NamedTuple

import torch
from torch import nn

from pvera_bench.adapters import AdaptedLayer
from pvera_bench.models.runtime import RandomStreams, torch_rng_state


def is_site(module: nn.Module) -> bool:
    """Whether the module differs between models of one backbone: an adapter's layer or a trained module."""
    return isinstance(module, AdaptedLayer) or any(p.requires_grad for p in module.parameters(recurse=False))


def site_names(model: nn.Module) -> list[str]:
    """The outermost sites of ``model``, in module order (``[""]`` when the model itself is one)."""
    names: list[str] = []
    for name, module in model.named_modules():
        if names and (names[-1] == "" or name.startswith(f"{names[-1]}.")):
            continue  # inside the last site (named_modules lists a module's children right after it)
        if is_site(module):
            names.append(name)
    return names


class PackedSite(nn.Module):
    """One site of several models: ``members[i]`` computes chunk i of the batch, with stream i when drawing."""

    def __init__(self, members: list[nn.Module], streams: RandomStreams | None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.streams = streams

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        outputs = []
        for index, (member, chunk) in enumerate(zip(self.members, x.chunk(len(self.members)), strict=True)):
            with self.streams.drawing(index) if self.streams is not None else contextlib.nullcontext():
                outputs.append(member(chunk, *args, **kwargs))
        return torch.cat(outputs)


def pack_models(models: list[nn.Module], streams: RandomStreams | None = None) -> nn.Module:
    """The trunk that runs ``models`` (one backbone, each its own adapter and head) as one on stacked batches.

    Raises ValueError when the models do not have the same sites.
    """
    names = site_names(models[0])
    for model in models[1:]:
        if site_names(model) != names:
            raise ValueError(f"cannot pack models whose adapted modules differ: {names} != {site_names(model)}")
    if names == [""]:
        return PackedSite(models, streams)
    first = models[0]
    shared = {id(t): t for t in itertools.chain(first.parameters(), first.buffers())}  # copy modules, not tensors
    compiled = first._compiled_call_impl  # ``nn.Module.compile`` binds it to ``first``: the trunk compiles its own
    first._compiled_call_impl = None
    try:
        trunk = copy.deepcopy(first, shared)
    finally:
        first._compiled_call_impl = compiled
    for name in names:
        trunk.set_submodule(name, PackedSite([model.get_submodule(name) for model in models], streams))
    if compiled is not None:
        trunk.compile()
    return trunk


class Probe(NamedTuple):
    """What one training-mode forward shows of a model: each site's output shape (batch size left out), and
    whether it drew random numbers (a sampled latent, dropout, drop path)."""

    shapes: list[tuple[str, tuple[int, ...]]]
    drew: bool


@torch.no_grad()
def probe(model: nn.Module, example: torch.Tensor) -> Probe:
    """One training-mode forward of ``example``. Models pack together only when their site shapes agree (VPT's
    prompt length changes the token count); a pack whose models draw gives each its own stream."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _, __, out, name=name: shapes.append((name, tuple(out.shape[1:])))
        )
        for name in site_names(model)
    ]
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng():
            before = torch_rng_state()
            model.forward(example)  # not ``model(...)``: a compiled model would compile this one-image graph
            after = torch_rng_state()
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    drew = not torch.equal(before["torch"], after["torch"]) or any(
        not torch.equal(b, a) for b, a in zip(before["cuda"], after["cuda"], strict=True)
    )
    return Probe(shapes, drew)
