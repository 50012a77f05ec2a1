"""The HTML report from a synthetic partial sweep: one self-contained file with the tables, every figure
embedded, the seed-interval bar chart and per-run provenance; and a headless Chromium that renders it offline."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageStat

from pvera_bench.artefacts.layout import RunFiles, config_digest
from pvera_bench.artefacts.predictions import write_predictions
from pvera_bench.cli.report import main as report_main
from pvera_bench.core.errors import UserError
from pvera_bench.evaluation.predict import Predictions

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
TASKS = ("cifar", "dtd", "svhn", "eurosat")
ADAPTERS = {"lora": ("a1b2c3d4", 294912), "pvera": ("0f1e2d3c", 24576), "vera": ("9a8b7c6d", 18432)}
PROBS = [[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]]
LABELS = [0, 1, 2, 0]


def write_run(root: Path, adapter: str, dataset: str, seed: int, top1: float | None, *, recorded: bool = True) -> Path:
    """A result JSON named as a run names it, with its predictions file; ``recorded=False``: an older run without
    the ``machine`` key (and no package versions)."""
    digest, params = ADAPTERS[adapter]
    config = {
        "adapter": {"name": adapter, "r": 8},
        "trainer": {"epochs": 10, "device": "cpu"},
        "protocol": {"name": "early_stop"},
        "sampling": {"mode": "mean"},
        "grid": {},
        "backbone": {"id": "vit_b16_in21k"},
    }
    folder = root / "vit_b16_in21k" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{adapter}__mean__early_stop__s{seed}__{digest}.json"
    record = {
        "status": "success" if top1 is not None else "failed",
        "adapter": adapter,
        "dataset": dataset,
        "backbone": "vit_b16_in21k",
        "sampling": "mean",
        "protocol": "early_stop",
        "seed": seed,
        "convention": "official",
        "quirks": [],
        "test_top1": top1,
        "test_nll": 1.0,
        "test_ece": 0.05,
        "adapter_params": params,
        "device": "cuda",
        "wall_s": 3725.0 + seed,
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "git_dirty": seed == 1,
        "config": config,
    }
    if top1 is None:
        record["error"] = "training loss is nan"
    else:
        predictions = RunFiles(path).predictions
        splits = {"test": Predictions(torch.tensor(LABELS), torch.tensor(PROBS))}
        write_predictions(predictions, splits, {"sampling": "mean", "n": "1"})
        record["predictions"] = predictions.name
    if recorded:
        record["machine"] = {"hostname": "node-17", "platform": "Linux", "cpus": 16, "gpu": "NVIDIA H100"}
        record["versions"] = {"python": "3.11.9", "torch": "2.14.1", "timm": "1.0.31"}
    path.write_text(json.dumps(record))
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A partial sweep (4 tasks, 2 adapters, 2 seeds, one failed run, one older run), its tables and report."""
    root = tmp_path_factory.mktemp("report")
    runs, tables, out = root / "runs", root / "tables", root / "site" / "report.html"
    for t, task in enumerate(TASKS):
        for seed in (0, 1):
            write_run(runs, "lora", task, seed, 0.60 + t / 20 + seed / 50, recorded=(task, seed) != ("dtd", 0))
            if (task, seed) != ("eurosat", 1):
                write_run(runs, "pvera", task, seed, 0.62 + t / 20 + seed / 40)
    write_run(runs, "pvera", "eurosat", 1, None)
    report_main(["--runs", str(runs), "--tables", str(tables), "--out", str(out)])  # the tables, then the page
    return runs, tables, out


class Elements(HTMLParser):
    """The tags and attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def elements(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(page)
    return parser.tags


def test_one_self_contained_file_with_tables_and_method_labels(sweep):
    _, tables, out = sweep
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # one file, nothing beside it
    page = out.read_text(encoding="utf-8")
    assert page.count("<table") >= 3
    assert "VTAB-1k test top-1 (%)" in page and "Calibration and uncertainty on the test split" in page
    assert re.search(r"<td[^>]*>lora</td>", page) and re.search(r"<td[^>]*>pvera</td>", page)  # method labels
    assert "CIFAR-100" in page and "±" in page
    assert "training loss is nan" in page  # the failed run, listed
    assert "16 result files: 15 successful" in page and "1 failed" in page
    assert "Statistics over seeds" in page and "Paired comparisons" in page  # the document statistics.md renders
    assert "lora · seed ensembles" in page
    assert [p.name for p in tables.glob("*.md")] != []  # the report wrote the tables it shows


def test_every_image_is_an_embedded_png_and_nothing_is_external(sweep):
    _, tables, out = sweep
    page = out.read_text(encoding="utf-8")
    images = [attrs for tag, attrs in elements(page) if tag == "img"]
    pngs = sorted(p.name for p in tables.glob("*.png"))
    assert len(images) == len(pngs) + 1  # every figure of the tables folder, and the bar chart of the one section
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        Image.open(BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1]))).verify()
    for name in pngs:
        assert f"({name})" in page  # captioned with its file name
    assert "Reliability diagrams · ViT-B/16 IN21k (vit_b16_in21k) · CIFAR-100" in page
    for tag, attrs in elements(page):
        assert tag != "link"
        assert not (tag == "script" and attrs.get("src"))
        for name in ("src", "href", "srcset", "poster", "data", "action"):
            value = attrs.get(name) or ""
            assert value.startswith(("data:", "#")) or not value, (tag, name, value)
    assert "http://" not in page and "https://" not in page
    assert "url(" not in page and "@import" not in page and "file:" not in page


def test_provenance_per_run(sweep):
    runs, _, out = sweep
    page = out.read_text(encoding="utf-8")
    table = page.split('<section id="provenance">')[1].split("</table>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.DOTALL)[1:]
    assert len(rows) == len(list(runs.rglob("*.json"))) == 16
    cells = {}
    for row in rows:
        values = [re.sub("<[^>]+>", "", value) for value in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        cells[values[0].split("/")[-1], values[3]] = values  # file name, task
    assert len(cells) == 16
    lora = cells["lora__mean__early_stop__s1__a1b2c3d4.json", "cifar"]
    assert lora[0] == "vit_b16_in21k/cifar/lora__mean__early_stop__s1__a1b2c3d4.json"  # its path under the runs
    digest = config_digest(json.loads((runs / lora[0]).read_text())["config"])  # of the recorded config
    assert lora[1:6] == ["success", "lora", "cifar", "1", digest]
    assert lora[6] == "01234567 (dirty)"
    assert lora[7:12] == ["node-17", "NVIDIA H100", "cuda", "torch 2.14.1 · timm 1.0.31", "1 h 02 min"]
    older = cells["lora__mean__early_stop__s0__a1b2c3d4.json", "dtd"]
    assert older[6] == "01234567 (clean)" and older[7:9] == ["not recorded", "not recorded"]
    assert older[10] == "not recorded"
    failed = cells["pvera__mean__early_stop__s1__0f1e2d3c.json", "eurosat"]
    assert failed[1] == "failed: training loss is nan"


def test_missing_runs_folder_or_no_results_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        report_main(["--runs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.html")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no result files"):
        report_main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")])
    assert not (tmp_path / "r.html").exists()


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed: apt-get install chromium")
def test_headless_chromium_renders_the_tables_and_every_image(sweep, tmp_path):
    _, _, out = sweep
    url = out.resolve().as_uri()
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", url, profile=tmp_path / "profile").stdout
    total = len([1 for tag, _ in elements(out.read_text(encoding="utf-8")) if tag == "img"])
    body = dict(next(attrs for tag, attrs in elements(dom) if tag == "body"))
    assert body["data-images-total"] == str(total) and total >= 5
    assert body["data-images-loaded"] == str(total)  # every embedded PNG decoded, none broken
    assert dom.count("<table") >= 3 and "VTAB-1k test top-1 (%)" in dom and "Provenance of the 16 runs" in dom

    screenshot = tmp_path / "page.png"
    chromium(f"--screenshot={screenshot}", "--window-size=1280,4000", url, profile=tmp_path / "profile")
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1280, 4000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, table stripes and figures: not a blank page
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 10  # pixel variance of a page with content


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed: apt-get install chromium")
def test_a_full_19_task_sweep_renders_with_its_statistics_and_cd_diagram(tmp_path):
    from pvera_bench.reporting.results import folders

    runs, tables, out = tmp_path / "runs", tmp_path / "tables", tmp_path / "report.html"
    for t, task in enumerate(folders()):
        for seed in (0, 1):
            for a, adapter in enumerate(ADAPTERS):
                write_run(runs, adapter, task, seed, 0.50 + t / 50 + a / 25 + seed / 200)
    report_main(["--runs", str(runs), "--tables", str(tables), "--out", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "runs", "tables"]
    page = out.read_text(encoding="utf-8")
    assert "critical_difference" in page and "Friedman p" in page and "19 of 19 tasks" in page
    assert page.index("Critical-difference diagram") < page.index("Reliability diagrams ·")
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", out.resolve().as_uri(), profile=tmp_path / "p").stdout
    body = dict(next(attrs for tag, attrs in elements(dom) if tag == "body"))
    assert body["data-images-loaded"] == body["data-images-total"] and int(body["data-images-total"]) >= 40
    assert "Provenance of the 114 runs" in dom
