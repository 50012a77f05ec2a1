"""An adapter from another package, registered by its entry points (pvera_bench.core.plugins): it runs, tabulates,
counts and rebuilds like a built-in one; a broken plugin is one line naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import offline_env

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "plugin"


def with_plugins(*paths: Path, cwd: Path, args: list[str], module: str = "pvera_bench") -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in ``cwd`` with ``paths`` on the Python path, as if they were installed."""
    env = {**offline_env(), "PYTHONPATH": ":".join(map(str, paths))}
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_a_plugin_adapter_runs_tabulates_and_rebuilds(data_root, tmp_path):
    results = tmp_path / "runs"
    run = ["experiment=demo", "adapter=output_scale", "trainer.epochs=1", f"paths.results={results}"]
    done = with_plugins(FIXTURE, cwd=tmp_path, args=[*run, f"data.root={data_root}"])
    assert done.returncode == 0, done.stderr
    [result] = results.rglob("output_scale__*.json")
    record = json.loads(result.read_text())
    assert record["config"]["adapter"] == {"name": "output_scale", "lr": 1e-3, "convention": "official", "init": 1.0}
    assert record["adapter_params"] == 4 * 192  # one scale per channel of attn.proj, in the tiny ViT's 4 blocks

    table = with_plugins(FIXTURE, cwd=tmp_path, args=["--runs", str(results), "--print"], module="pvera_bench.table")
    assert table.returncode == 0, table.stderr
    assert "output_scale" in table.stdout

    counts = with_plugins(FIXTURE, cwd=tmp_path, args=["adapter=output_scale"], module="pvera_bench.params")
    assert json.loads(counts.stdout.strip().splitlines()[-1])["adapter_params"] == 12 * 768  # on ViT-B/16

    rebuild = (
        "import torch; from pvera_bench import build_from_artefact; "
        f"m = build_from_artefact({str(result.with_suffix('.adapter.safetensors'))!r}); "
        "print(type(m.blocks[0].attn.proj).__name__)"
    )
    rebuilt = subprocess.run(
        [sys.executable, "-c", rebuild],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**offline_env(), "PYTHONPATH": str(FIXTURE)},
        timeout=600,
    )
    assert rebuilt.stdout.strip() == "OutputScale", rebuilt.stderr


def plugin(
    root: Path, module: str, source: str | None, group: str, target: str | None = None, name: str = "mine"
) -> Path:
    """A distribution ``<module>`` 0.1 declaring ``name = <target>`` in entry-point ``group``, with a module
    ``<module>`` holding ``source`` (None: no module)."""
    info = root / f"{module}-0.1.dist-info"
    info.mkdir(parents=True)
    if source is not None:
        (root / f"{module}.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {target or module}\n")
    return root


@pytest.mark.parametrize(
    "source, group, message",
    [
        ("import nosuchmodule\n", "pvera_bench.adapters", "failed to import: ModuleNotFoundError: No module named"),
        ("x = 1\n", "pvera_bench.adapters", "the module registers no adapter 'mine' (register_adapter)"),
        (None, "pvera_bench.conf", "no importable package 'broken_mod.conf'; fix the entry point or reinstall"),
    ],
    ids=["import-error", "registers-nothing", "missing-conf-package"],
)
def test_a_broken_plugin_is_one_line_naming_it(tmp_path, source, group, message):
    module = "broken_mod"
    target = "broken_mod.conf" if source is None else None  # a config package that is not there
    root = plugin(tmp_path / "site", module, source, group, target)
    done = with_plugins(root, cwd=tmp_path, args=["experiment=demo", "adapter=lora", f"paths.results={tmp_path}/r"])
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: entry point mine = ") and message in line, line
    assert f"of {module} 0.1" in line
    assert not (tmp_path / "r").exists()
