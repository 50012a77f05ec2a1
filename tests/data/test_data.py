"""The VTAB-1k folder reader: bad data named precisely, the NOAH layout, and the decoded cache."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pvera_bench.core.errors import UserError
from pvera_bench.data import vtab
from pvera_bench.data.vtab import load_split, locate_task

SIZE = (8, 8)


def make_task(root, name="task", counts=None, suffix="png", classes=3):
    """A small task folder in the VTAB-1k layout with real image files."""
    counts = counts or {"train800": 800, "val200": 200, "test": 5}
    task = root / name
    rng = np.random.default_rng(0)
    lines = {}
    for split, count in counts.items():
        (task / "images" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            relative = f"images/{split}/{i:06d}.{suffix}"
            Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)).save(task / relative)
            rows.append(f"{relative} {i % classes}")
        lines[split] = rows
    lines["train800val200"] = lines.get("train800", []) + lines.get("val200", [])
    for split, rows in lines.items():
        (task / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return task


@pytest.fixture(scope="module")
def task_template(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("template"))


@pytest.fixture
def task(task_template, tmp_path):
    return shutil.copytree(task_template, tmp_path / "task")


def relabel(task, split: str, row: int, label: int) -> None:
    """Change the label on one line of a split file."""
    rows = (task / f"{split}.txt").read_text().splitlines()
    rows[row] = f"{rows[row].rsplit(maxsplit=1)[0]} {label}"
    (task / f"{split}.txt").write_text("\n".join(rows) + "\n")


def load(task, split="test", classes=3, **kwargs):
    return load_split(task, split, classes, SIZE, progress=False, **kwargs)


def test_loads_resized_uint8_tensors(task):
    data = load(task, "train800")
    assert data.images.shape == (800, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.labels.tolist()[:4] == [0, 1, 2, 0]


def test_noah_layout_with_jpegs_loads_unchanged(tmp_path):
    task = make_task(tmp_path, "cifar", counts={"train800": 800, "val200": 200, "test": 3}, suffix="jpg")
    assert len(load(task, "train800val200")) == 1000
    assert locate_task(tmp_path, "cifar", {}) == task


def test_missing_listed_file(task):
    missing = task / "images" / "test" / "000002.png"
    missing.unlink()
    with pytest.raises(UserError, match=f"^{missing}: listed in the split file but missing$"):
        load(task)


def test_undecodable_file(task):
    broken = task / "images" / "test" / "000001.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(UserError, match=f"^{broken}: cannot be decoded"):
        load(task, cache=False)


def test_label_out_of_range_names_file_and_line(task):
    relabel(task, "test", 3, 7)
    with pytest.raises(UserError, match=rf"^{task / 'test.txt'}:4: label 7 is outside \[0, 3\)"):
        load(task)


@pytest.mark.parametrize(
    "content, message",
    [
        ("images/test/000000.png cat\n", r"test.txt:1: label 'cat' is not an integer$"),
        ("images/test/000000.png\n", r"test.txt:1: expected 'relative/path label', got 'images/test/000000.png'$"),
        ("../secret.png 0\n", r"test.txt:1: path '../secret.png' leaves the task folder"),
        ("\n", r"test.txt: the split is empty$"),
    ],
    ids=["non-integer-label", "line-without-label", "path-leaving-the-task-folder", "empty-split"],
)
def test_bad_split_file(task, content, message):
    (task.parent / "secret.png").write_bytes(b"x")
    (task / "test.txt").write_text(content)
    with pytest.raises(UserError, match=message):
        load(task)


def test_split_with_the_wrong_count(task):
    rows = (task / "train800.txt").read_text().splitlines()[:799]
    (task / "train800.txt").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"train800.txt: 799 images listed, VTAB-1k says 800$"):
        load(task, "train800")


def test_test_count_is_checked_against_the_manifest(task):
    (task / "manifest.json").write_text(json.dumps({"splits": {"test": {"count": 6}}}))
    with pytest.raises(UserError, match=r"test.txt: 5 images listed, manifest.json says 6$"):
        load(task)


def test_missing_task_names_folder_and_command(tmp_path):
    with pytest.raises(UserError, match=rf"no VTAB-1k data for dtd in {tmp_path / 'dtd'} .*pvera-bench prepare dtd"):
        locate_task(tmp_path, "dtd", {})


def test_second_load_reads_only_the_cache(task, monkeypatch):
    first = load(task)
    assert (task / ".cache" / "test-8x8-bicubic.pt").is_file()
    monkeypatch.setattr(vtab, "decode_image", lambda *a: pytest.fail("decoded again despite the cache"))
    second = load(task)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_changed_source_rebuilds_the_cache(task):
    first = load(task)
    image = task / "images" / "test" / "000000.png"
    Image.fromarray(np.full((6, 5, 3), 7, dtype=np.uint8)).save(image)
    os.utime(image, ns=(1, 1))  # a new size/mtime, whatever the clock's resolution
    second = load(task)
    assert not torch.equal(first.images[0], second.images[0])
    assert (second.images[0] == 7).all()
    assert torch.equal(first.images[1:], second.images[1:])


def test_changed_label_or_resolution_gets_its_own_decode(task):
    load(task)
    relabel(task, "test", 0, 2)
    assert load(task).labels[0] == 2
    bigger = load_split(task, "test", 3, (16, 16), progress=False)
    assert bigger.images.shape[-2:] == (16, 16)
    assert (task / ".cache" / "test-16x16-bicubic.pt").is_file()


def test_corrupted_cache_is_rebuilt(task, caplog):
    reference = load(task)
    cache = task / ".cache" / "test-8x8-bicubic.pt"
    cache.write_bytes(cache.read_bytes()[:100])
    rebuilt = load(task)
    assert torch.equal(rebuilt.images, reference.images)
    assert "is unreadable" in caplog.text
    assert torch.load(cache, weights_only=True)["images"].shape == reference.images.shape


def test_unwritable_cache_still_loads(task, caplog, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(vtab.torch, "save", refuse)  # a dataset folder on a read-only share
    assert len(load(task)) == 5
    assert "cannot write the decoded cache" in caplog.text
    assert not any((task / ".cache").glob("*.pt"))
