"""Shared fixtures: the real mnist5k task built once, Hydra composition, and the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from pvera_bench.adapters import adapter_parameters
from pvera_bench.cli import CONF_DIR
from pvera_bench.config import register_configs
from pvera_bench.data.mnist5k import build_mnist5k
from pvera_bench.results import result_path

REPO = Path(__file__).resolve().parent.parent
register_configs()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data.root holding the real mnist5k task."""
    root = tmp_path_factory.mktemp("vtab")
    build_mnist5k(root / "mnist5k")
    return root


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


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


def expected_result_path(cfg: DictConfig) -> Path:
    """Where a run of ``cfg`` writes its result (its checkpoint and lock sit beside it)."""
    return result_path(Path(cfg.paths.results), OmegaConf.to_container(cfg, resolve=True))


def results(folder: Path) -> dict[str, dict]:
    """Every result JSON under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))}


def offline_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_command(*command: str) -> subprocess.CompletedProcess:
    """Run a command from the repository root, offline, as a user would."""
    return subprocess.run(list(command), capture_output=True, text=True, cwd=REPO, env=offline_env(), timeout=600)


def start_cli(*args: str) -> subprocess.Popen:
    """Start ``python -m pvera_bench`` in the background (to interrupt it); stderr is captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "pvera_bench", *args],
        cwd=REPO,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(*args: str, module: str = "pvera_bench") -> subprocess.CompletedProcess:
    return run_command(sys.executable, "-m", module, *args)


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return run_command(sys.executable, str(REPO / script), *args)


def tiny_vit(num_classes: int = 5, **kwargs) -> torch.nn.Module:
    """A small random ViT with a fused qkv, as timm builds ViT-B/16, for adapter tests."""
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=num_classes)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**args, **kwargs}).eval()


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every trainable adapter tensor away from its initial value, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter_parameters(model).values():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="session")
def mock_root(tmp_path_factory) -> Path:
    """A data.root with all 19 VTAB-1k tasks built by scripts/prepare_vtab.py from TFDS mock data."""
    root = tmp_path_factory.mktemp("vtab_mock")
    result = run_script("scripts/prepare_vtab.py", "all", "--mock", "--root", str(root), "--quiet")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 19
    return root


RESUME_ARGS = ("experiment=demo", "trainer=smoke", "adapter=pvera", "trainer.epochs=8")


@pytest.fixture(scope="session")
def uninterrupted(data_root, tmp_path_factory) -> tuple[list[str], dict]:
    """Arguments of an 8-epoch PVeRA run and its uninterrupted result: the resume tests' reference."""
    args = [*RESUME_ARGS, f"data.root={data_root}"]
    folder = tmp_path_factory.mktemp("uninterrupted")
    completed = run_cli(*args, f"paths.results={folder}")
    assert completed.returncode == 0, completed.stderr[-3000:]
    [record] = results(folder).values()
    return args, record
