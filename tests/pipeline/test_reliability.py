"""Every bad file and full disk a one-line error before training where it can be, strict keys, and the run's lock.

In-process where the behaviour lives in one function (validation, reading a task, the writer); a few end to end
through the command line. Runs use the demo experiment with a two-epoch trainer.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import compose_config, expected_result_path, run_cli

from pvera_bench.artefacts.layout import RunFiles
from pvera_bench.core.errors import UserError
from pvera_bench.core.files import WriteError, write_atomically, write_json
from pvera_bench.data import check_split, locate_task
from pvera_bench.pipeline import run as run_module
from pvera_bench.pipeline.guards import exclusive
from pvera_bench.pipeline.run import run
from pvera_bench.pipeline.validate import validate
from pvera_bench.reporting.results import load_results


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+xyz=1", "xyz is not a config key (the config has adapter, dataset, backbone"),
        ("+trainer.xyz=1", "trainer.xyz is not a config key (trainer has epochs, batch_size, eval_batch_size"),
        ("+trainer.lrr=1", "trainer.lrr is not a config key (did you mean trainer.lr?)"),
        ("++trainer.epoch=3", "trainer.epoch is not a config key (did you mean trainer.epochs?)"),
        ("+adapter.rr=4", "adapter.rr is not a config key (did you mean adapter.r?)"),
        (
            "+quirks.double_softmx=true",
            "quirks.double_softmx is not a config key (did you mean quirks.double_softmax?)",
        ),
    ],
)
def test_a_key_the_schema_does_not_define_is_refused(override, message):
    with pytest.raises(UserError) as caught:
        validate(compose_config("experiment=demo", override))
    assert str(caught.value).startswith(message)
    assert "keys cannot be added with + or ++, except timm arguments under backbone.model_kwargs" in str(caught.value)


def test_timm_arguments_may_be_added_under_model_kwargs():
    config = validate(compose_config("experiment=demo", "+backbone.model_kwargs.drop_path_rate=0.1"))
    assert config.backbone.model_kwargs["drop_path_rate"] == 0.1 and config.backbone.model_kwargs["depth"] == 4


def test_an_added_key_on_the_command_line_is_one_line_and_writes_nothing(data_root, tmp_path):
    result = run_cli("experiment=demo", "+trainer.lrr=1", f"data.root={data_root}", f"paths.results={tmp_path}/r")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: trainer.lrr is not a config key (did you mean trainer.lr?); keys cannot be added with + or ++, "
        "except timm arguments under backbone.model_kwargs"
    ]
    assert not (tmp_path / "r").exists()


@pytest.fixture
def task(data_root, tmp_path) -> Path:
    """A copy of the real mnist5k task folder, to break."""
    return shutil.copytree(
        data_root / "mnist5k", tmp_path / "vtab" / "mnist5k", ignore=shutil.ignore_patterns(".cache")
    )


def one_line(action) -> str:
    with pytest.raises(UserError) as caught:
        action()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_file_system_faults_locating_or_reading_a_task_are_one_line(task, tmp_path, monkeypatch):
    root = tmp_path / "file-as-root"
    root.write_text("")
    assert "data.root " + str(root) + " is a file, not a folder" in one_line(lambda: locate_task(root, "dtd", {}))
    (tmp_path / "vtab" / "dtd").write_text("")
    message = one_line(lambda: locate_task(tmp_path / "vtab", "dtd", {}))
    assert f"the task folder of dtd {tmp_path / 'vtab' / 'dtd'} is a file, not a folder" in message
    (task / "val200.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    assert one_line(lambda: check_split(task, "val200", 10)) == (
        f"{task / 'val200.txt'}: not a text file (lines 'relative/path label'); rebuild the task"
    )
    (task / "test.txt").unlink()
    (task / "test.txt").mkdir()
    assert one_line(lambda: check_split(task, "test", 10)).startswith(f"{task / 'test.txt'}: cannot be read (")

    def refused(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refused)  # as root, chmod cannot make a file unreadable
    assert one_line(lambda: check_split(task, "train800", 10)) == (
        f"{task / 'train800.txt'}: cannot be read (Permission denied); check the file and its folder"
    )


def test_a_missing_image_of_any_split_is_found_before_training(task):
    first = (task / "test.txt").read_text().splitlines()[0].split()[0]
    (task / first).unlink()
    assert one_line(lambda: check_split(task, "test", 10)) == f"{task / first}: listed in the split file but missing"


def test_a_corrupt_test_split_stops_the_run_before_the_first_epoch(task, demo_config, monkeypatch):
    lines = (task / "test.txt").read_text().splitlines()
    path, _ = lines[6].split()
    lines[6] = f"{path} 12"  # line 7: a label outside the 10 classes
    (task / "test.txt").write_text("\n".join(lines) + "\n")
    cfg = demo_config("adapter=lora", f"data.root={task.parent}")
    monkeypatch.setattr(run_module, "build_model", lambda cfg: pytest.fail("a model was built"))
    message = one_line(lambda: run(cfg))
    assert message == f"{task / 'test.txt'}:7: label 12 is outside [0, 10) (dataset.num_classes=10)"
    assert not Path(cfg.paths.results).exists()  # no checkpoint, no lock, no result


def test_an_image_that_does_not_decode_ends_the_run_leaving_nothing_behind(task, demo_config):
    first = (task / "test.txt").read_text().splitlines()[0].split()[0]
    (task / first).write_bytes(b"not a png")
    cfg = demo_config("adapter=lora", f"data.root={task.parent}")
    message = one_line(lambda: run(cfg))
    assert message.startswith(f"{task / first}: cannot be decoded (")
    assert sorted(p.name for p in Path(cfg.paths.results).rglob("*") if p.is_file()) == []


def test_a_full_disk_is_one_line_and_leaves_the_previous_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"status": "success"})

    def full(file):
        file.write(b"{")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError) as caught:
        write_atomically(path, full)
    assert str(caught.value).startswith(f"cannot write {path}: the disk is full (")
    assert str(caught.value).endswith("free some space or choose another folder, then run the same command again")
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"] and json.loads(path.read_text())["status"]


def test_torch_save_on_a_full_disk_is_the_same_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("pvera_bench.core.files.free_bytes", lambda folder: 4096)

    def torch_on_a_full_disk(file):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    with pytest.raises(WriteError, match="the disk is full"):
        write_atomically(tmp_path / "run.ckpt", torch_on_a_full_disk)
    assert list(tmp_path.iterdir()) == []


def test_a_run_whose_disk_fills_keeps_its_last_checkpoint_and_resumes(demo_config, monkeypatch):
    cfg = demo_config("adapter=lora")
    saves = []
    real_save = torch.save

    def save_once_then_full(obj, file, *args, **kwargs):
        if ".ckpt." in getattr(file, "name", ""):  # a checkpoint (the decoded caches are saved by torch too)
            saves.append(file.name)
            if len(saves) > 1:  # the second epoch's checkpoint: the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_once_then_full)
    message = one_line(lambda: run(cfg))
    files = RunFiles(expected_result_path(cfg))
    assert message.startswith(f"cannot write {files.checkpoint}: the disk is full (")
    left = sorted(p.name for p in files.result.parent.iterdir())
    assert left == [files.checkpoint.name]  # the first epoch's checkpoint, whole; no temporary file, no lock
    monkeypatch.setattr(torch, "save", real_save)
    assert run(cfg)["status"] == "success"  # space freed: the same command resumes and finishes


def test_the_lock_is_removed_when_a_run_ends_and_a_finished_run_is_not_run_again(demo_config, monkeypatch):
    cfg = demo_config("adapter=linear")
    record = run(cfg)
    files = RunFiles(expected_result_path(cfg))
    assert not files.lock.exists() and record["status"] == "success"
    files.result.unlink()
    checks = iter([None, record])  # the run's first look finds nothing; another process finishes it meanwhile
    monkeypatch.setattr(run_module, "finished_result", lambda path: next(checks))
    monkeypatch.setattr(run_module, "execute", lambda *args: pytest.fail("trained a finished run again"))
    assert run(cfg) == record


def test_a_lock_file_removed_by_its_holder_is_taken_again(tmp_path):
    lock = tmp_path / "run.lock"
    with exclusive(lock) as first:
        assert first and lock.exists()
        with exclusive(lock) as second:
            assert not second  # the same run under way elsewhere
    assert not lock.exists()
    with exclusive(lock) as again:
        assert again


def test_make_table_lists_a_result_with_wrong_typed_values_and_tables_the_rest(tmp_path, demo_config):
    record = run(demo_config("adapter=linear"))
    runs = Path(demo_config().paths.results)
    bad = next(runs.rglob("*.json")).with_name("lora__mean__early_stop__s9__deadbeef.json")
    bad.write_text(json.dumps({**record, "test_top1": "0.9"}))
    frame = load_results(runs)
    assert len(frame) == 1 and frame.attrs["unreadable"] == [
        f"{bad}: test_top1 is '0.9' (str), expected int or float; delete or fix the file"
    ]
    result = run_cli("--runs", str(runs), "--out", str(tmp_path / "tables"), module="pvera_bench.table")
    assert result.returncode == 0, result.stderr
    assert f"warning: {bad}: test_top1 is '0.9'" in result.stderr
    assert "Unreadable result files (left out)" in (tmp_path / "tables" / "vtab1k.md").read_text()


def test_a_timm_argument_the_model_does_not_take_is_one_line(demo_config):
    cfg = demo_config("adapter=lora", "+backbone.model_kwargs.bogus=1")
    message = one_line(lambda: run(cfg))
    assert message.startswith("backbone.model_kwargs={") and "unexpected keyword argument 'bogus'" in message
    assert not Path(cfg.paths.results).exists()


def test_the_analysis_commands_refuse_a_file_as_the_runs_folder(tmp_path):
    from pvera_bench.cli.table import loaded

    (tmp_path / "runs").write_text("")
    assert one_line(lambda: loaded(tmp_path / "runs")) == (
        f"--runs {tmp_path / 'runs'} is a file, not the folder of result files (results/runs)"
    )
