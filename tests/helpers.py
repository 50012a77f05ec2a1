"""Helpers shared by the test suites of every subpackage: Hydra composition, the CLI in a subprocess, tiny models."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import timm
import torch
from omegaconf import DictConfig, OmegaConf

from pvera_bench.adapters import adapter_parameters
from pvera_bench.artefacts.layout import RunFiles, result_path
from pvera_bench.pipeline.compose import compose_config as compose

REPO = Path(__file__).resolve().parent.parent
RESUME_ARGS = ("experiment=demo", "trainer=smoke", "adapter=pvera")


def compose_config(*overrides: str) -> DictConfig:
    return compose(list(overrides))


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


def adapter_path(result: Path) -> Path:
    """The adapter file beside a result (the results folder's rule: :class:`RunFiles`)."""
    return RunFiles(result).adapter


def predictions_file(result: Path) -> Path:
    return RunFiles(result).predictions


def squeezed(text: str) -> str:
    """Markdown with the padding of its table cells (pandas' to_markdown aligns columns) collapsed to one space."""
    return re.sub(r" {2,}", " ", text)


def run_bench(*args: str) -> subprocess.CompletedProcess:
    """Run the ``pvera-bench`` console command of the environment the tests run in."""
    return run_command(str(Path(sys.executable).parent / "pvera-bench"), *args)
