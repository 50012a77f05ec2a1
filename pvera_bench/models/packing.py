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
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from pvera_bench.adapters import AdaptedLayer
from pvera_bench.models.runtime import RandomStreams, same_torch_rng_state, torch_rng_state


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


def splits_at_base(member: nn.Module) -> bool:
    """Whether a site is an adapted layer in the split form (it keeps :meth:`AdaptedLayer.forward`) around a base
    layer that trains nothing."""
    return (
        isinstance(member, AdaptedLayer)
        and not overrides(member, "forward")
        and not any(p.requires_grad for p in member.base_layer.parameters())
    )


def runs_base_once(members: list[nn.Module]) -> bool:
    """Whether a site runs its members' frozen base layer once on the whole batch: each splits there
    (:func:`splits_at_base`) and no forward hook watches it (a pack calls its ``adapt_input`` and
    ``adapt_output``, not its ``forward``)."""
    return all(
        splits_at_base(member) and not any(m._forward_hooks or m._forward_pre_hooks for m in member.modules())
        for member in members
    )


def overrides(member: nn.Module, method: str) -> bool:
    """Whether an adapted layer's class defines its own ``method`` (``forward``, ``adapt_input``, ``adapt_output``)."""
    return getattr(type(member), method) is not getattr(AdaptedLayer, method)


class PackedSite(nn.Module):
    """One site of several models: ``members[i]`` computes chunk i of the batch, with stream i when drawing.

    Where the members are adapted layers in the split form (:func:`runs_base_once`), the first member's frozen
    ``base_layer`` runs once on every member's adapted input, and each member adapts its own chunk of the output.
    """

    def __init__(self, members: list[nn.Module], streams: RandomStreams | None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.streams = streams
        self.base_once = runs_base_once(members)
        self.adapts_input = self.base_once and any(overrides(m, "adapt_input") for m in members)
        self.adapts_output = self.base_once and any(overrides(m, "adapt_output") for m in members)

    def each(self, call: Callable[..., torch.Tensor], *chunks: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """``call(member i, chunks[0][i], ...)`` for every member, drawing from stream i."""
        outputs = []
        for index, (member, *args) in enumerate(zip(self.members, *chunks, strict=True)):
            with self.streams.drawing(index) if self.streams is not None else contextlib.nullcontext():
                outputs.append(call(member, *args))
        return outputs

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        chunks = x.chunk(len(self.members))
        if not self.base_once:
            return torch.cat(self.each(lambda member, chunk: member(chunk, *args, **kwargs), chunks))
        if self.adapts_input:
            inputs = self.each(lambda member, chunk: member.adapt_input(chunk), chunks)
            x = x if all(read is chunk for read, chunk in zip(inputs, chunks, strict=True)) else torch.cat(inputs)
        out = self.members[0].base_layer(x, *args, **kwargs)
        if not self.adapts_output:
            return out
        outputs = out.chunk(len(self.members))
        return torch.cat(self.each(lambda member, chunk, output: member.adapt_output(chunk, output), chunks, outputs))


def pack_models(models: list[nn.Module], streams: RandomStreams | None = None) -> nn.Module:
    """The trunk that runs ``models`` (one backbone, each its own adapter and head) as one on stacked batches.

    Raises ValueError when the models do not have the same sites or the same frozen tensors.
    """
    names = site_names(models[0])
    for model in models[1:]:
        if site_names(model) != names:
            raise ValueError(f"cannot pack models whose adapted modules differ: {names} != {site_names(model)}")
        if not same_trunk_tensors(models[0], model):
            raise ValueError("cannot pack models whose frozen tensors differ: the trunk computes them with the first's")
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


def trunk_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors of ``model`` that a trunk uses for every packed model (it takes them from the first): those
    outside the sites, and those of the base layers that sites may run once (:func:`splits_at_base`)."""
    sites = site_names(model)
    if sites == [""]:
        return []
    shared = [f"{name}.base_layer." for name in sites if splits_at_base(model.get_submodule(name))]
    owned = [f"{name}." for name in sites]
    return [
        (name, tensor)
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers())
        if name.startswith(tuple(shared)) or not name.startswith(tuple(owned))
    ]


def same_trunk_tensors(first: nn.Module, other: nn.Module) -> bool:
    """Whether two models hold the same tensors (names, shapes, values) where a trunk computes both with the
    first's, so that packing them is exact."""
    ours, theirs = trunk_tensors(first), trunk_tensors(other)
    return len(ours) == len(theirs) and all(
        a == b and x.shape == y.shape and torch.equal(x, y) for (a, x), (b, y) in zip(ours, theirs, strict=True)
    )


class DrawLog:
    """Which parts of a forward drew random numbers: the adapters' own computations, or the frozen layers."""

    def __init__(self, outermost: str) -> None:
        self.parts = [outermost]  # the part running now, innermost last
        self.last = torch_rng_state()
        self.drew: set[str] = set()

    def note(self) -> None:
        """Credit any draw since the last note to the part that was running."""
        now = torch_rng_state()
        if not same_torch_rng_state(now, self.last):
            self.drew.add(self.parts[-1])
        self.last = now

    def enter(self, part: str) -> None:
        self.note()
        self.parts.append(part)

    def leave(self) -> None:
        self.note()
        self.parts.pop()


class Probe(NamedTuple):
    """What one training-mode forward shows of a model: each site's output shape and, where a pack would run the
    base layer once, the shape of what it reads (batch size left out); whether its adapters drew random numbers
    (a sampled latent, dropout, drop path), and whether its frozen layers did (stochastic depth in the backbone),
    which a pack could not give each model as it draws alone."""

    shapes: list[tuple[str, tuple[int, ...]]]
    drew: bool
    frozen_drew: bool


@torch.no_grad()
def probe(model: nn.Module, example: torch.Tensor) -> Probe:
    """One training-mode forward of ``example``. Models pack together only when their site shapes agree (VPT's
    prompt length changes the token count) and their frozen layers draw nothing; a pack whose adapters draw gives
    each model its own stream. A base layer that a pack runs once (:func:`runs_base_once`) counts as frozen."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    names = site_names(model)
    whole = names == [""]  # the whole model is the one site: it all trains, and hooks on it would not fire
    log = DrawLog("adapter" if whole else "frozen")

    def entered(part: str, name: str, args: tuple) -> None:
        log.enter(part)
        if part == "frozen":  # a base layer that a pack runs once on the stacked inputs: they must stack
            shapes.append((f"{name} input", tuple(args[0].shape[1:])))

    def left(name: str, out: torch.Tensor) -> None:
        log.leave()
        shapes.append((name, tuple(out.shape[1:])))

    hooks = []
    for name in [] if whole else names:
        site = model.get_submodule(name)
        watched = [(site, "adapter", name)]
        if runs_base_once([site]):
            watched.append((site.base_layer, "frozen", f"{name}.base_layer"))
        for layer, part, label in watched:
            hooks.append(layer.register_forward_pre_hook(lambda _, args, p=part, n=label: entered(p, n, args)))
            hooks.append(layer.register_forward_hook(lambda _, __, out, n=label: left(n, out)))
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng():
            log.last = torch_rng_state()
            out = model.forward(example)  # not ``model(...)``: a compiled model would compile this one-image graph
            log.note()
        if whole:
            shapes.append(("", tuple(out.shape[1:])))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return Probe(shapes, "adapter" in log.drew, "frozen" in log.drew)
