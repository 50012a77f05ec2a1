"""python -m pvera_bench.params and the README's parameter table."""

from __future__ import annotations

import json
import re

import pytest
from helpers import REPO, run_cli

from pvera_bench.pipeline.params import parameter_report

L, D, MLP, R_LORA, R_VERA, H = 12, 768, 3072, 8, 256, 64
P, R_FACT, H_SMALL, GROUPS = 5, 8, 8, 2  # VPT prompts, FacT rank, Adapter+/Convpass/RepAdapter width, RepAdapter groups
FORMULAS = {  # the README's formulas, evaluated for ViT-B (12 blocks, width 768)
    "linear": 0,
    "lora": L * 2 * R_LORA * (D + D),
    "dora": L * 2 * (R_LORA * (D + D) + D),
    "vera": L * 2 * (R_VERA + D),
    "pvera": L * 2 * (2 * R_VERA + D),
    "ia3": L * (D + D + MLP),
    "adaptformer": L * (2 * D * H + H + D + 1),  # official convention: a learnable scale per block
    "bottleneck": 2 * L * (2 * D * H + H + D),
    "vpt_shallow": P * D,
    "vpt_deep": L * P * D,
    "bitfit": 2 * D + L * (7 * D + MLP),  # patch embedding, final norm; per block norm1, qkv, proj, norm2, fc1, fc2
    "ln_tuning": (4 * L + 2) * D,
    "ssf": 2 * (2 * D + L * (7 * D + MLP)),  # a scale and a shift on each output BitFit has a bias on
    "fact_tt": 2 * D * R_FACT + 12 * L * R_FACT**2,
    "fact_tk": 2 * D * R_FACT + 12 * L * R_FACT + R_FACT**3,
    "adapter_plus": L * (2 * D * H_SMALL + H_SMALL + 2 * D),
    "convpass": 2 * L * (2 * D * H_SMALL + 9 * H_SMALL**2 + 2 * H_SMALL + D),
    "repadapter": 2 * L * (D * H_SMALL + H_SMALL + D * H_SMALL // GROUPS + D),
}


# The official code's trainable counts on DINOv2-B/14 at its grid's first point (reference/pvera.md §3.3).
OFFICIAL_COUNTS = {
    "vera": ([], 24_576),
    "pvera": ([], 30_720),
    "lora": (["adapter.r=32"], 1_179_648),
    "dora": (["adapter.r=32", "quirks.dora_frozen_magnitude=true"], 1_179_648),  # magnitudes frozen (E2a)
    "adaptformer": (["adapter.hidden_dim=192"], 3_550_476),
    "bottleneck": (["adapter.hidden_dim=192"], 7_100_928),
    "ia3": ([], 55_296),
    "linear": ([], 0),
}


@pytest.mark.parametrize("backbone", ["vit_b16_in21k", "dinov2_vitb14"])
@pytest.mark.parametrize("adapter", sorted(FORMULAS))
def test_default_counts_equal_the_table_formulas(adapter, backbone):
    """The table's two columns: the built model's count at the adapter's defaults, on either backbone."""
    assert parameter_report([f"backbone={backbone}", f"adapter={adapter}"])["adapter_params"] == FORMULAS[adapter]


@pytest.mark.parametrize("adapter", sorted(OFFICIAL_COUNTS))
def test_official_convention_gives_the_official_codes_counts_on_dinov2(adapter):
    overrides, expected = OFFICIAL_COUNTS[adapter]
    official = ["backbone=dinov2_vitb14", f"adapter={adapter}", "adapter.convention=official"]
    report = parameter_report([*official, *overrides])
    assert report["adapter_params"] == expected


@pytest.mark.parametrize("adapter, expected", [("vera", 24_576), ("pvera", 30_720)])
def test_params_cli_reports_the_paper_counts(adapter, expected):
    result = run_cli("backbone=vit_b16_in21k", f"adapter={adapter}", module="pvera_bench.params")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "adapter": adapter,
        "adapter_params": expected,
        "head_params": 76_900,
        "total_params": report["total_params"],
    }
    assert report["total_params"] > 85_000_000


def test_readme_parameter_table_matches_its_formulas():
    readme = (REPO / "docs" / "adapters.md").read_text()
    table = readme.split("| adapter | formula (defaults) | ViT-B/16 | DINOv2-B/14 |")[1].split("\n\n")[0]
    rows = {}
    for line in table.strip().splitlines()[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[re.sub(r"[`]", "", cells[0]).split()[0]] = (int(cells[2].replace(",", "")), int(cells[3].replace(",", "")))
    for adapter, expected in FORMULAS.items():
        assert rows[adapter] == (expected, expected), adapter
    assert set(rows) == {*FORMULAS, "full"}
