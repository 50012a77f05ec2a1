"""scripts/prepare_vtab.py on TFDS mock data: all 19 tasks, idempotence, resumption, split arithmetic."""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers import run_cli, run_script

from pvera_bench.data.prepare import resolve_split

TASK_FOLDERS = [
    "caltech101",
    "cifar",
    "clevr_count",
    "clevr_dist",
    "diabetic_retinopathy",
    "dmlab",
    "dsprites_loc",
    "dsprites_ori",
    "dtd",
    "eurosat",
    "kitti",
    "oxford_flowers102",
    "oxford_iiit_pet",
    "patch_camelyon",
    "resisc45",
    "smallnorb_azi",
    "smallnorb_ele",
    "sun397",
    "svhn",
]


def snapshot(root) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_all_19_tasks_have_the_1k_splits(mock_root):
    assert sorted(p.name for p in mock_root.iterdir() if p.name in TASK_FOLDERS) == TASK_FOLDERS
    for task in TASK_FOLDERS:
        lines = {
            s: (mock_root / task / f"{s}.txt").read_text().splitlines()
            for s in ("train800", "val200", "train800val200", "test")
        }
        assert (len(lines["train800"]), len(lines["val200"]), len(lines["train800val200"])) == (800, 200, 1000), task
        assert lines["train800val200"] == lines["train800"] + lines["val200"]
        assert lines["test"], task
        manifest = json.loads((mock_root / task / "manifest.json").read_text())
        assert manifest["mock"] is True and manifest["image_format"] == "png"
        assert {s: manifest["splits"][s]["count"] for s in lines} == {s: len(v) for s, v in lines.items()}
        assert all((mock_root / task / line.rsplit(maxsplit=1)[0]).is_file() for line in lines["val200"])


def test_manifest_records_the_task_adaptation_splits(mock_root):
    splits = json.loads((mock_root / "cifar" / "manifest.json").read_text())["splits"]
    assert splits["val200"]["spec"] == "train[p90:p90+200]"
    assert splits["val200"]["resolved"] == "train[1800:2000]"  # 90 % of the 2,000 mock examples
    dsprites = json.loads((mock_root / "dsprites_loc" / "manifest.json").read_text())["splits"]
    assert dsprites["test"]["resolved"] == "train[1800:2000]"  # after 80 % train and 10 % val


def test_second_run_does_nothing_and_says_so(mock_root):
    before = snapshot(mock_root)
    result = run_script("scripts/prepare_vtab.py", "all", "--mock", "--root", str(mock_root), "--quiet")
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 19 and all(line.endswith("already prepared in " + line.split(" in ")[1]) for line in lines)
    assert all("nothing to do" in line for line in lines)
    assert snapshot(mock_root) == before


def test_interrupted_task_resumes_keeping_finished_splits(tmp_path):
    args = ("scripts/prepare_vtab.py", "dtd", "--mock", "--root", str(tmp_path), "--quiet")
    assert run_script(*args).returncode == 0
    task = tmp_path / "dtd"
    complete = json.loads((task / "manifest.json").read_text())
    # simulate a kill during the test split: no manifest, no test.txt, half the test images
    (task / "manifest.json").unlink()
    (task / "test.txt").unlink()
    for image in sorted((task / "images" / "test").iterdir())[50:]:
        image.unlink()
    state = {"splits": {k: v for k, v in complete["splits"].items() if k in ("train800", "val200")}}
    (task / ".prepare-state.json").write_text(json.dumps(state))
    kept = (task / "train800.txt").stat().st_mtime_ns
    result = run_script(*args)
    assert result.returncode == 0 and "dtd: prepared" in result.stdout
    resumed = json.loads((task / "manifest.json").read_text())
    assert (task / "train800.txt").stat().st_mtime_ns == kept
    assert {k: v["sha256"] for k, v in resumed["splits"].items() if "sha256" in v} == {
        k: v["sha256"] for k, v in complete["splits"].items() if "sha256" in v
    }
    assert not (task / ".prepare-state.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_real_preparation_without_tensorflow_says_to_install_the_data_extra(tmp_path):
    result = run_script("scripts/prepare_vtab.py", "cifar100", "--root", str(tmp_path))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: preparing real VTAB-1k data needs TensorFlow: pip install -e '.[data]'")
    )
    assert not any(tmp_path.iterdir())


def test_unknown_task_lists_the_choices(tmp_path):
    result = run_script("scripts/prepare_vtab.py", "cifar10", "--mock", "--root", str(tmp_path))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: unknown task 'cifar10'; choose from all, caltech101, cifar100")


@pytest.mark.parametrize(
    "spec, size, expected",
    [
        ("train[:800]", 50000, "train[0:800]"),
        ("train[p90:p90+200]", 50000, "train[45000:45200]"),
        ("train[p90:p90+200]", 3060, "train[2754:2954]"),  # 90 * 3060 // 100, rounded down
        ("train[p60+p20:]", 31500, "train[25200:31500]"),
        ("train[p80+p10:]", 737280, "train[663552:737280]"),
        ("test[50%:]", 24300, "test[12150:24300]"),
        ("test", 10000, "test[0:10000]"),
        ("validation[:200]", 150, "validation[0:150]"),
    ],
)
def test_split_specs_resolve_like_task_adaptation(spec, size, expected):
    assert str(resolve_split(spec, lambda split: size)) == expected


def test_bad_split_spec():
    with pytest.raises(ValueError, match="bad split spec 'train\\[1:2:3\\]'"):
        resolve_split("train[1:2:3]", lambda split: 10)


def test_a_run_on_a_mock_task_writes_a_result(mock_root, tmp_path):
    result = run_cli(
        "experiment=demo",
        "adapter=pvera",
        "dataset=kitti",
        "trainer=smoke",
        f"data.root={mock_root}",
        f"paths.results={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    [path] = tmp_path.rglob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "success" and record["dataset"] == "kitti" and record["adapter"] == "pvera"
    assert (mock_root / "kitti" / ".cache").is_dir()
