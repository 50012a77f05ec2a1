"""The contract checker users run on their own adapters: every built-in adapter keeps the contract, and each kind
of broken promise is caught and named."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from pvera_bench.adapters import ADAPTERS
from pvera_bench.testing import CHECKS, ContractError, check_adapter

FIXTURE = str(Path(__file__).parent / "fixtures" / "plugin")


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_registered_adapter_keeps_the_contract(name):
    assert check_adapter(name) == [check.__name__ for check in CHECKS]


def misdeclared(monkeypatch, name: str, **changes) -> str:
    """Register a copy of adapter ``name`` under a new name, with its spec's promises changed."""
    spec = dataclasses.replace(ADAPTERS[name], name=f"{name}_misdeclared", **changes)
    monkeypatch.setitem(ADAPTERS, spec.name, spec)
    return spec.name


@pytest.mark.parametrize(
    "name, changes, promise",
    [
        (
            "lora",
            {"prefix": "lora_A"},
            "lora_misdeclared: trains what it declares: blocks.0.attn.qkv.lora_B is a parameter the adapter adds, "
            "frozen",
        ),
        ("bottleneck", {"identity_at_init": ("official",)}, "identity at init (convention=official): outputs differ"),
        ("ia3", {"stochastic": True}, "ia3_misdeclared: stochastic: two training forwards are equal"),
        ("adaptformer", {"mergeable": True}, "mergeable: merge_adapter fails: ParallelAdapter cannot be folded"),
    ],
)
def test_a_broken_promise_is_named(monkeypatch, name, changes, promise):
    with pytest.raises(ContractError, match=promise.replace("(", r"\(").replace(")", r"\)")):
        check_adapter(misdeclared(monkeypatch, name, **changes))


def test_the_plugin_fixture_passes_and_its_broken_variant_fails(monkeypatch):
    """tests/fixtures/plugin is a researcher's package; its modules register as its entry point would import them."""
    monkeypatch.syspath_prepend(FIXTURE)
    try:
        importlib.import_module("toy_adapter.adapter")
        importlib.import_module("toy_adapter.broken")
        assert check_adapter("output_scale")[-1] == "check_adapter_file"
        with pytest.raises(ContractError, match=r"^output_scale_broken: merged equals unmerged: outputs differ by"):
            check_adapter("output_scale_broken")
    finally:  # the rest of the session sees the built-in registry
        for name in ("output_scale", "output_scale_broken"):
            ADAPTERS.pop(name, None)


def test_an_unregistered_name_is_named():
    with pytest.raises(ContractError, match=r"^nosuch: not registered \(registered: adapter_plus, adaptformer"):
        check_adapter("nosuch")
