"""Shared fixtures: the real mnist5k task built once, the demo config, the 19 mock tasks, a reference run."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import RESUME_ARGS, compose_config, results, run_bench, run_cli
from omegaconf import DictConfig

from pvera_bench.data.mnist5k import build_mnist5k


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data.root holding the real mnist5k task."""
    root = tmp_path_factory.mktemp("vtab")
    build_mnist5k(root / "mnist5k")
    return root


@pytest.fixture
def demo_config(data_root, tmp_path):
    """Compose the demo experiment with a two-epoch trainer, reading data_root and writing under tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(
            "experiment=demo",
            "trainer=smoke",
            f"data.root={data_root}",
            f"paths.results={tmp_path / 'runs'}",
            *overrides,
        )

    return make


@pytest.fixture(scope="session")
def mock_root(tmp_path_factory) -> Path:
    """A data.root with all 19 VTAB-1k tasks built by ``pvera-bench prepare`` from TFDS mock data."""
    root = tmp_path_factory.mktemp("vtab_mock")
    result = run_bench("prepare", "all", "--mock", "--root", str(root), "--quiet")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 19
    return root


@pytest.fixture(scope="session")
def uninterrupted(data_root, tmp_path_factory) -> Callable[[str, int], tuple[list[str], dict]]:
    """The resume tests' reference: for a grid option and a number of epochs, the arguments of a PVeRA run and
    its uninterrupted result (grid=pvera: its three points train packed)."""

    @functools.cache
    def reference(grid: str, epochs: int) -> tuple[list[str], dict]:
        args = [*RESUME_ARGS, f"grid={grid}", f"trainer.epochs={epochs}", f"data.root={data_root}"]
        folder = tmp_path_factory.mktemp("uninterrupted")
        completed = run_cli(*args, f"paths.results={folder}")
        assert completed.returncode == 0, completed.stderr[-3000:]
        [record] = results(folder).values()
        return args, record

    return reference
