"""The tree is the architecture: the layer contract holds (and catches an upward import), no import circles, small
files, and conf/ inside the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
from helpers import REPO, offline_env

PACKAGE = REPO / "pvera_bench"
MAX_LINES = 300
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's contracts of ``root/pyproject.toml`` on the package under ``root``."""
    env = {**offline_env(), "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_layer_contract_holds():
    completed = lint_imports(REPO)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Contracts: 1 kept, 0 broken." in completed.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "pvera_bench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    files = tmp_path / "pvera_bench" / "core" / "files.py"
    files.write_text(files.read_text() + "\nfrom pvera_bench.reporting import tables  # noqa: E402\n")
    completed = lint_imports(tmp_path)
    assert completed.returncode == 1
    assert "layers: nothing imports upward BROKEN" in completed.stdout
    assert "pvera_bench.core.files -> pvera_bench.reporting.tables" in completed.stdout


def test_no_import_circle():
    graph = grimp.build_graph("pvera_bench")
    circles = [
        (importer, imported)
        for importer in sorted(graph.modules)
        for imported in sorted(graph.find_modules_directly_imported_by(importer))
        if graph.chain_exists(importer=imported, imported=importer)
    ]
    assert circles == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_file_is_long(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_configs_ship_inside_the_package():
    from pvera_bench.config import CONF_DIR

    assert CONF_DIR == PACKAGE / "conf" and (CONF_DIR / "config.yaml").is_file()
    assert not (REPO / "conf").exists()
