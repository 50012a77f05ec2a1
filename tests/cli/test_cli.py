"""The command line: bad input ends in one line and a non-zero exit, with nothing written."""

from __future__ import annotations

import re

from helpers import run_bench, run_cli
from omegaconf import OmegaConf

from pvera_bench.adapters import ADAPTERS
from pvera_bench.cli import COMMANDS
from pvera_bench.config import CONF_DIR


def test_unknown_adapter_lists_the_valid_names():
    result = run_cli("adapter=nonexistent")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "Could not find 'adapter/nonexistent'" in lines[0]
    for name in ADAPTERS:
        assert name in lines[0]


def test_wrong_type_is_one_line():
    result = run_cli("trainer.lr=abc")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: Error merging override trainer.lr=abc: Value 'abc' of type 'str' could not be converted to Float"
    ]


def test_misspelt_key_is_one_line():
    result = run_cli("trainer.lrr=1")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "Key 'lrr' not in 'TrainerConfig'" in line


def test_out_of_range_value_is_one_line(tmp_path):
    result = run_cli("experiment=demo", "sampling=mc", "sampling.n=0", f"paths.results={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: sampling.n=0 must be >= 1"
    assert not list(tmp_path.rglob("*.json"))


def test_missing_data_names_the_path_and_the_prepare_command(tmp_path):
    result = run_cli(
        "adapter=pvera", "dataset=cifar100", f"data.root={tmp_path / 'vtab'}", f"paths.results={tmp_path / 'runs'}"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert str(tmp_path / "vtab" / "cifar") in line
    assert "pvera-bench prepare cifar" in line
    assert not (tmp_path / "runs").exists()


def test_missing_weights_say_how_to_provide_them(data_root, tmp_path):
    result = run_cli(
        "experiment=demo", "backbone=vit_b16_in21k", f"data.root={data_root}", f"paths.results={tmp_path / 'runs'}"
    )
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot get pretrained weights for vit_base_patch16_224.orig_in21k")
    assert "backbone.weights=" in line and "backbone.pretrained=false" in line
    assert not (tmp_path / "runs").exists()


def help_groups(text: str) -> dict[str, str]:
    """The config-group entries of ``--help``: group -> its option lines (description line left out)."""
    section = text.split("== Config groups")[1].split("\n\n== ")[0]
    entries: dict[str, list[str]] = {}
    for line in section.splitlines()[1:]:
        if re.match(r"  \S", line):
            entries[line.split()[0]] = []
        elif line.strip():
            entries[list(entries)[-1]].append(line.strip())
    return {group: " ".join(lines) for group, lines in entries.items()}


def test_help_names_the_app_its_commands_and_only_the_user_facing_groups():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pvera_bench: ")
    assert "powered by Hydra" not in result.stdout and "schema/" not in result.stdout
    for command in (
        "make demo",
        "make table",
        "python -m pvera_bench adapter=pvera dataset=cifar100",
        "pvera-bench prepare",
    ):
        assert command in result.stdout
    groups = help_groups(result.stdout)
    choices = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))["defaults"]
    defaults = {group: option for choice in choices if isinstance(choice, dict) for group, option in choice.items()}
    assert list(groups) == [
        "adapter",
        "dataset",
        "backbone",
        "sampling",
        "protocol",
        "grid",
        "trainer",
        "ood",
        "logger",
        "experiment",
    ]
    for group, text in groups.items():
        listed = [name.strip() for name in re.sub(r"\([^)]*\)", "", text).split(",")]
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert sorted(name.strip("[]") for name in listed) == options, group
        assert [name.strip("[]") for name in listed if name.startswith("[")] == (
            [defaults[group]] if defaults[group] else []
        )


def test_the_old_protocol_name_runs_the_renamed_protocol_with_a_notice(data_root, tmp_path):
    completed = run_cli(
        "experiment=demo", "trainer=smoke", "protocol=pvera", f"data.root={data_root}", f"paths.results={tmp_path}"
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    notice = "notice: protocol=pvera is now called protocol=early_stop (the same protocol); results say early_stop"
    assert notice in completed.stderr.splitlines()
    [result] = tmp_path.rglob("*.json")
    assert "__early_stop__" in result.name and '"protocol": "early_stop"' in result.read_text()


def test_the_console_command_lists_its_subcommands():
    result = run_bench("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: pvera-bench <command> [arguments]")
    for command in COMMANDS:
        assert f"\n  {command} " in result.stdout
    assert run_bench().returncode == 2  # no command: the usage, exit 2


def test_an_unknown_subcommand_is_one_line():
    result = run_bench("tabel")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: unknown command 'tabel'; choose one of " + ", ".join(COMMANDS) + " (pvera-bench --help)"
    ]


def test_run_is_the_hydra_app_and_python_m_forms_are_the_same_commands():
    hydra_help = run_bench("run", "--help")
    assert hydra_help.returncode == 0 and hydra_help.stdout.startswith("pvera_bench: ")
    assert run_cli("--help").stdout == hydra_help.stdout  # python -m pvera_bench
    for command in ("table", "report", "export", "params"):
        via_module = run_cli("--help", module=f"pvera_bench.{command}")
        assert via_module.returncode == 0, via_module.stderr
        assert via_module.stdout == run_bench(command, "--help").stdout
