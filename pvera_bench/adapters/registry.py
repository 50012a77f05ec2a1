"""The adapter registry, and which adapter a model carries.

An adapter registers once, by name, with :func:`register_adapter`: the built-in ones when
:mod:`pvera_bench.adapters` imports them, those of other packages when :func:`load_adapter_plugins` imports the
modules they declare (:mod:`pvera_bench.core.plugins`). :data:`ADAPTERS` is what the ``adapter``
config group, :func:`~pvera_bench.adapters.apply_adapter` and the tests iterate over. The config of the adapter
applied to a model is kept here, keyed by the model (not as an attribute on the timm model); models copied with
:func:`copy_model` keep it.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pvera_bench.config import AdapterConfig, Convention
from pvera_bench.core.errors import UserError
from pvera_bench.core.plugins import ADAPTER_GROUP, declared, origin


@dataclass(frozen=True)
class AdapterSpec:
    """A registered adapter: how to configure and inject it, and what it is.

    Args:
        prefix: parameter names with a part starting with it train (with the head); None: only the
            head trains (linear probe); ``"*"``: the whole backbone trains.
        mergeable: :func:`~pvera_bench.adapters.merge_adapter` can fold it into the base weights.
        stochastic: it samples at training time, has a test-time :func:`~pvera_bench.adapters.sample_latents`
            mode and an :func:`~pvera_bench.adapters.adapter_loss`.
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
    """Make an adapter available by name to :func:`~pvera_bench.adapters.apply_adapter` and the ``adapter``
    config group."""
    if name in ADAPTERS:
        raise ValueError(f"adapter {name!r} is registered twice")
    ADAPTERS[name] = AdapterSpec(name, config_cls, inject, prefix, mergeable, stochastic, identity_at_init)


def load_adapter_plugins() -> None:
    """Import the module of every ``pvera_bench.adapters`` entry point; each must register the adapter it is named
    after. A module that fails to import, or registers no such adapter, is a :class:`UserError` naming it."""
    for entry in declared(ADAPTER_GROUP):
        if entry.name in ADAPTERS:
            raise UserError(f"{origin(entry)}: adapter {entry.name!r} is already registered; rename the entry point")
        try:
            entry.load()
        except Exception as error:  # noqa: BLE001 (whatever the plugin raises, the user must fix the plugin)
            raise UserError(f"{origin(entry)} failed to import: {type(error).__name__}: {error}") from error
        if entry.name not in ADAPTERS:
            raise UserError(f"{origin(entry)}: the module registers no adapter {entry.name!r} (register_adapter)")


@dataclass(frozen=True)
class AppliedAdapter:
    """What a model carries: the validated config of its adapter, and whether it was merged into the weights."""

    config: AdapterConfig
    merged: bool = False

    @property
    def spec(self) -> AdapterSpec:
        return ADAPTERS[self.config.name]


_APPLIED: weakref.WeakKeyDictionary[nn.Module, AppliedAdapter] = weakref.WeakKeyDictionary()


def applied_adapter(model: nn.Module) -> AppliedAdapter | None:
    """The adapter applied to ``model`` (merged or not); None when none was applied."""
    return _APPLIED.get(model)


def set_applied_adapter(model: nn.Module, applied: AppliedAdapter) -> None:
    _APPLIED[model] = applied


def adapter_config(model: nn.Module) -> AdapterConfig | None:
    """The config of the adapter applied to ``model`` and not merged (None: none, or merged)."""
    applied = applied_adapter(model)
    return None if applied is None or applied.merged else applied.config


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that carries the same adapter."""
    clone = copy.deepcopy(model)
    if (applied := applied_adapter(model)) is not None:
        set_applied_adapter(clone, applied)
    return clone
