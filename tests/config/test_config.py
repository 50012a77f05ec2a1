"""Config validation: every bad value is one exact line, found before anything is built or written.

Messages are checked in-process from one table (compose as the CLI does, then ``validate``);
bad input that only the run can see (a model that has no such layer, data with more classes)
is checked through ``run``; a few cases go through the command line as a user meets them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import compose_config, run_cli
from omegaconf import OmegaConf

from pvera_bench.adapters import ADAPTERS
from pvera_bench.cli.runner import USAGE_ERRORS
from pvera_bench.config import (
    CONF_DIR,
    BackboneConfig,
    DatasetConfig,
    ProtocolConfig,
    RunConfig,
    SamplingConfig,
    SamplingMode,
    Scheduler,
    Split,
    TaskGroup,
    TfdsSource,
    TrainerConfig,
)
from pvera_bench.core.errors import UserError, one_line
from pvera_bench.pipeline.run import run
from pvera_bench.pipeline.validate import validate

SMOKE = ("experiment=demo", "trainer=smoke")
GROUPS = ("adapter", "dataset", "backbone", "sampling", "protocol", "grid", "trainer", "logger", "experiment")

# (case, overrides on the demo experiment with trainer=smoke, the exact line after "error: ")
INVALID_CONFIGS = [
    (
        "unknown-adapter",
        ["adapter=nonexistent"],
        "In 'config': Could not find 'adapter/nonexistent'; available options in 'adapter': "
        "adapter_plus adaptformer bitfit bottleneck convpass dora fact_tk fact_tt full ia3 linear ln_tuning lora pvera "
        "repadapter ssf vera vpt_deep vpt_shallow",
    ),
    (
        "unregistered-adapter-name",
        ["adapter.name=foo"],
        "adapter.name='foo' is not registered; choose one of adapter_plus, adaptformer, bitfit, bottleneck, convpass, "
        "dora, fact_tk, fact_tt, full, ia3, linear, ln_tuning, lora, pvera, repadapter, ssf, vera, vpt_deep, "
        "vpt_shallow",
    ),
    (
        "wrong-type",
        ["trainer.lr=abc"],
        "Error merging override trainer.lr=abc: Value 'abc' of type 'str' could not be converted to Float",
    ),
    (
        "misspelt-key",
        ["trainer.lrr=1"],
        "Could not override 'trainer.lrr'. To append to your config use +trainer.lrr=1: "
        "Key 'lrr' not in 'TrainerConfig'",
    ),
    ("zero-epochs", ["trainer.epochs=0"], "trainer.epochs=0 must be >= 1"),
    ("negative-batch", ["trainer.batch_size=-1"], "trainer.batch_size=-1 must be >= 1"),
    ("zero-eval-batch", ["trainer.eval_batch_size=0"], "trainer.eval_batch_size=0 must be >= 1"),
    ("negative-lr", ["trainer.lr=-0.1"], "trainer.lr=-0.1 must be positive"),
    ("negative-weight-decay", ["trainer.weight_decay=-1"], "trainer.weight_decay=-1.0 must be >= 0"),
    ("negative-warmup", ["trainer.warmup_epochs=-1"], "trainer.warmup_epochs=-1 must be >= 0"),
    (
        "unknown-scheduler",
        ["trainer.scheduler=linear"],
        "Error merging override trainer.scheduler=linear: Invalid value 'linear', expected one of [constant, cosine]",
    ),
    ("mc-with-no-samples", ["sampling=mc", "sampling.n=0"], "sampling.n=0 must be >= 1"),
    (
        "unknown-sampling-mode",
        ["sampling.mode=median"],
        "Error merging override sampling.mode=median: Invalid value 'median', expected one of "
        "[mean, random, fixed, mc, mc_layer]",
    ),
    ("zero-beta", ["dataset.beta=0"], "dataset.beta=0.0 must be positive (the KL weight is 1/beta)"),
    ("negative-beta", ["dataset.beta=-1e6"], "dataset.beta=-1000000.0 must be positive (the KL weight is 1/beta)"),
    ("one-class", ["dataset.num_classes=1"], "dataset.num_classes=1 must be >= 2"),
    (
        "unknown-task-group",
        ["dataset.group=other"],
        "Error merging override dataset.group=other: Invalid value 'other', expected one of "
        "[natural, specialized, structured, demo]",
    ),
    ("zero-rank", ["adapter=lora", "adapter.r=0"], "adapter=lora: adapter.r must be >= 1, got 0"),
    (
        "unknown-convention",
        ["adapter=vera", "adapter.convention=hf"],
        "Error merging override adapter.convention=hf: Invalid value 'hf', expected one of [official, peft]",
    ),
    (
        "joint-early-stopping-without-early-stopping",
        ["protocol=vtab", "quirks.joint_early_stopping=true"],
        "quirks.joint_early_stopping needs protocol.early_stopping=true and protocol.select_metric=nll "
        "(the official code's selection); use protocol=early_stop",
    ),
    (
        "unknown-quirk",
        ["quirks.softmax=true"],
        "Could not override 'quirks.softmax'. To append to your config use +quirks.softmax=true: Key 'softmax' "
        "not in 'QuirksConfig'",
    ),
    ("zero-alpha", ["adapter=lora", "adapter.alpha=0"], "adapter=lora: adapter.alpha must be positive, got 0.0"),
    ("zero-adapter-lr", ["adapter=vera", "adapter.lr=0"], "adapter=vera: adapter.lr must be positive, got 0.0"),
    (
        "bad-qkv-slice",
        ["adapter=pvera", "adapter.qkv_slices=[q,x]"],
        "adapter=pvera: adapter.qkv_slices must be distinct names from q, k, v; got ['q', 'x']",
    ),
    (
        "negative-dropout",
        ["adapter=lora", "adapter.dropout=-0.5"],
        "adapter=lora: adapter.dropout must be in [0, 1), got -0.5",
    ),
    ("zero-patience", ["protocol.patience=0"], "protocol.patience=0 must be >= 1"),
    (
        "improvement-threshold-out-of-range",
        ["protocol.min_rel_improvement=1.5"],
        "protocol.min_rel_improvement=1.5 must be in [0, 1)",
    ),
    (
        "unknown-split",
        ["protocol.train_split=train"],
        "Error merging override protocol.train_split=train: Invalid value 'train', expected one of "
        "[train800, val200, train800val200, test]",
    ),
    (
        "unknown-select-metric",
        ["protocol.select_metric=acc"],
        "Error merging override protocol.select_metric=acc: Invalid value 'acc', expected one of [nll, top1]",
    ),
    ("test-split-used-for-selection", ["protocol.val_split=test"], "test data may only test"),
    ("test-split-used-for-retraining", ["protocol=vtab", "protocol.retrain_split=test"], "test data may only test"),
    (
        "grid-without-validation",
        ["grid=pvera", "adapter=lora", "protocol.val_split=null"],
        "a grid needs protocol.val_split to choose a point (or use grid=none)",
    ),
    ("negative-seed", ["seed=-1"], "seed=-1 must be >= 0"),
    ("no-decode-workers", ["data.decode_workers=0"], "data.decode_workers=0 must be >= 1"),
    ("zero-image-size", ["backbone.img_size=0"], "backbone.img_size=0 must be >= 1 (or null for the model's own)"),
    (
        "code-as-logger",
        ["logger=wandb", "logger._target_=os.system"],
        "logger._target_=os.system is not a class of pvera_bench.training.loggers.: configs are data, and only "
        "pvera_bench's own loggers are instantiated from them",
    ),
]

# Bad input that only the run sees (model, data, weights, disk): (case, overrides, part of the line)
INVALID_RUNS = [
    (
        "lora-rank-above-width",
        ["adapter=lora", "adapter.r=500"],
        "adapter=lora: adapter.r=500 exceeds the width 192 of attn.qkv; use adapter.r <= 192",
    ),
    ("dora-rank-above-width", ["adapter=dora", "adapter.r=193"], "adapter.r=193 exceeds the width 192"),
    (
        "missing-target-layer",
        ["adapter=vera", "adapter.targets=[attn.nope]"],
        "adapter target 'attn.nope' does not exist in block 0",
    ),
    ("unknown-device", ["trainer.device=gpu"], "trainer.device=gpu is not a device; use auto, cpu, cuda or cuda:N"),
    ("classes-fewer-than-labels", ["dataset.num_classes=5"], "is outside [0, 5) (dataset.num_classes=5)"),
    ("unknown-timm-model", ["backbone.name=vit_nope"], "backbone.name=vit_nope: timm has no such model"),
    (
        "weights-file-missing",
        ["backbone.weights=/nonexistent/model.safetensors"],
        "backbone.weights=/nonexistent/model.safetensors: no such file",
    ),
    ("unwritable-results", ["paths.results=/dev/null/runs"], "paths.results: cannot write to /dev/null/runs"),
]


def config_error(*overrides: str) -> str:
    """The line a user sees for these overrides on the demo (composition, then validation); '' if none."""
    try:
        validate(compose_config(*SMOKE, *overrides))
    except USAGE_ERRORS as error:
        return one_line(error)
    return ""


def files_besides_caches(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.suffix != ".pt")


def assert_nothing_written(results: Path, data_root: Path, data_before: list[Path]) -> None:
    """No result or checkpoint, data files as they were, and any decoded cache complete (uint8 images)."""
    assert not list(results.rglob("*.json")) and not list(results.rglob("*.ckpt"))
    assert files_besides_caches(data_root) == data_before
    caches = [p for p in data_root.rglob("*") if p.suffix == ".pt"]
    assert all(torch.load(p, weights_only=True)["images"].dtype == torch.uint8 for p in caches)


@pytest.mark.parametrize("overrides, message", [c[1:] for c in INVALID_CONFIGS], ids=[c[0] for c in INVALID_CONFIGS])
def test_invalid_config_is_one_exact_line(overrides, message):
    assert config_error(*overrides) == message


@pytest.mark.parametrize("overrides, message", [c[1:] for c in INVALID_RUNS], ids=[c[0] for c in INVALID_RUNS])
def test_bad_input_found_by_the_run_is_one_line_with_nothing_written(overrides, message, demo_config, data_root):
    data_before = files_besides_caches(data_root)
    cfg = demo_config(*overrides)
    assert config_error(*overrides, f"data.root={data_root}") == ""  # valid as a config: the run finds it
    with pytest.raises(UserError) as caught:
        run(cfg)
    line = one_line(caught.value)
    assert "\n" not in str(caught.value) and message in line, line
    results = Path(cfg.paths.results)
    assert_nothing_written(results, data_root, data_before)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.epochs=0"], "trainer.epochs=0 must be >= 1"),
        (["logger=wandb", "logger._target_=os.system"], "logger._target_=os.system is not a class of"),
        (["backbone.name=vit_nope"], "backbone.name=vit_nope: timm has no such model"),
    ],
    ids=["out-of-range", "code-as-logger", "unknown-timm-model"],
)
def test_bad_input_on_the_command_line_is_one_line_exit_2_and_nothing_written(overrides, message, data_root, tmp_path):
    results = tmp_path / "runs"
    data_before = files_besides_caches(data_root)
    result = run_cli(*SMOKE, f"data.root={data_root}", f"paths.results={results}", *overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert_nothing_written(results, data_root, data_before)


def test_a_grid_key_that_is_not_a_config_key(demo_config):
    cfg = demo_config("adapter=lora")
    cfg.grid = {"lora": {"adapter.rank": [2, 4]}}
    with pytest.raises(UserError, match=r"^grid.lora: adapter.rank is not a config key$"):
        validate(cfg)
    with pytest.raises(UserError, match=r"^grid.lora: adapter.rank is not a config key$"):
        run(cfg)


def test_every_grid_point_must_be_a_valid_adapter(demo_config):
    cfg = demo_config("adapter=lora")
    cfg.grid = {"lora": {"adapter.dropout": [0.1, 2.0], "trainer.lr": [1e-3]}}
    with pytest.raises(UserError, match=r"^adapter=lora: adapter.dropout must be in \[0, 1\), got 2.0$"):
        validate(cfg)
    cfg.grid = {"lora": {"adapter.dropout": [0.0, 0.1], "backbone.model_kwargs.depth": [4]}}
    assert validate(cfg).adapter.dropout == 0.0  # the grid checks its points, the config keeps its own value


def test_vera_and_pvera_ranks_may_exceed_the_width(demo_config):
    record = run(demo_config("adapter=vera", "adapter.r=500", "trainer.epochs=1"))
    assert record["status"] == "success" and record["adapter_params"] == 4 * 2 * (500 + 192)


def test_validate_returns_the_typed_config_and_modes_read_as_their_strings():
    cfg = compose_config(*SMOKE, "sampling=mc", "protocol=vtab", "trainer.scheduler=cosine", "trainer.warmup_epochs=1")
    typed = validate(cfg)
    assert isinstance(typed, RunConfig) and type(typed.adapter).__name__ == "PveraConfig"
    assert (typed.sampling.mode, typed.sampling.n) == (SamplingMode.mc, 10)
    assert typed.protocol.retrain_split is Split.train800val200 and typed.trainer.scheduler is Scheduler.cosine
    assert typed.dataset.group is TaskGroup.demo
    for value, text in [
        (cfg.sampling.mode, "mc"),
        (cfg.protocol.select_metric, "top1"),
        (cfg.trainer.scheduler, "cosine"),
    ]:
        assert value == text and f"{value}" == text and str(value) == text


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_is_a_valid_config(group):
    options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    assert options
    for option in options:
        assert config_error(f"{group}={option}") == "", option


def schema_defaults(group: str, option: str) -> dict:
    """The defaults of the schema that conf/<group>/<option>.yaml extends."""
    schemas = {
        "backbone": BackboneConfig,
        "dataset": DatasetConfig,
        "sampling": SamplingConfig,
        "protocol": ProtocolConfig,
        "trainer": TrainerConfig,
    }
    node = ADAPTERS[option].config_cls(name=option) if group == "adapter" else schemas[group]
    defaults = OmegaConf.to_container(OmegaConf.structured(node))
    return defaults | ({"tfds": OmegaConf.to_container(OmegaConf.structured(TfdsSource))} if group == "dataset" else {})


@pytest.mark.parametrize("group", ["adapter", "backbone", "dataset", "sampling", "protocol", "trainer"])
def test_yaml_options_state_only_what_differs_from_the_schema(group):
    """A YAML value equal to the schema's default would be a second place for that default."""
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        defaults = schema_defaults(group, path.stem)
        values = OmegaConf.to_container(OmegaConf.load(path))
        values.pop("defaults")
        repeated = [key for key, value in values.items() if defaults[key] == value]
        repeated += [
            f"tfds.{key}" for key, value in (values.get("tfds") or {}).items() if defaults["tfds"][key] == value
        ]
        assert not repeated, f"{path.name}: {repeated} repeat the schema's default"
