"""Structured-config schemas for every Hydra group, registered in Hydra's ConfigStore.

Each YAML option under ``conf/<group>/`` is merged onto the schema of its group, so a
misspelt key or a value of the wrong type fails when the config is composed, before any
model or data is built. Adapter schemas live with their adapters
(``pvera_bench.adapters``) and are registered under ``schema/adapter/<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pvera_bench.data.vtab import SPLITS
from pvera_bench.errors import UserError
from pvera_bench.grid import grid_points, with_point

SAMPLING_MODES = ("mean", "random", "fixed", "mc")
VTAB_GROUPS = ("natural", "specialized", "structured", "demo")
SELECT_METRICS = ("nll", "top1")
LOGGER_MODULE = "pvera_bench.loggers."


@dataclass
class BackboneConfig:
    """A timm backbone, frozen by the adapter."""

    id: str = MISSING  # short name used in result paths and tables
    name: str = MISSING  # timm model name, e.g. vit_base_patch16_224.orig_in21k
    pretrained: bool = True
    weights: str | None = None  # local weights file, loaded through timm's pretrained_cfg overlay
    img_size: int | None = None  # input resolution; None keeps the model's default
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm constructor arguments


@dataclass
class TfdsSource:
    """Where a task comes from in TFDS, with google-research/task_adaptation's split definitions.

    Split specs are TFDS slices whose bounds may use ``pNN``: NN percent of the split's size,
    rounded down as task_adaptation does (``NN * n // 100``), and sums such as ``p60+p20``.
    """

    name: str = MISSING  # builder[/config]:version, e.g. cifar100:3.*.*
    train800: str = "train[:800]"
    val200: str = MISSING
    test: str = "test"
    extract: str = "plain"  # pvera_bench.data.labels.EXTRACTORS key: example -> (image, label)
    manual: str | None = None  # what to download by hand, and where to put it, when TFDS cannot


@dataclass
class DatasetConfig:
    """One VTAB-1k task (or the offline demo task) in the folder layout of DESIGN §4."""

    name: str = MISSING  # folder name under data.root
    num_classes: int = MISSING
    group: str = MISSING  # natural | specialized | structured | demo
    beta: float = 1e6  # PVeRA KL weight is 1/beta
    tfds: TfdsSource | None = None  # None: not built from TFDS (mnist5k)


@dataclass
class SamplingConfig:
    """PVeRA's test-time sampling mode; ignored by deterministic adapters."""

    mode: str = "mean"  # mean | random | fixed | mc
    n: int = 1  # number of stochastic forward passes for mode=mc


@dataclass
class ProtocolConfig:
    """Which split trains, which selects among the grid points, and which (if any) retrains the choice.

    Every point of the adapter's grid (the ``grid`` group) is trained on ``train_split`` and scored on ``val_split``;
    the best point (``select_metric``) is tested as trained, or trained again from scratch on
    ``retrain_split`` first. Test data are read only after that.
    """

    name: str = MISSING
    train_split: str = "train800"
    val_split: str | None = "val200"  # evaluated every epoch; None: no validation
    retrain_split: str | None = None  # e.g. train800val200: retrain the chosen point on it, then test
    early_stopping: bool = True  # stop on val loss and restore the best epoch's weights
    patience: int = 20  # epochs without a relative val-loss improvement before stopping
    min_rel_improvement: float = 1e-3  # 0.1 %: what counts as an improvement
    select_metric: str = "nll"  # nll: lowest val loss | top1: highest val accuracy


@dataclass
class TrainerConfig:
    """Optimisation and runtime settings shared by every adapter."""

    epochs: int = 500
    batch_size: int = 16
    eval_batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-4
    scheduler: str = "constant"  # constant | cosine
    warmup_epochs: int = 0
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    checkpoint: bool = True  # save a resumable checkpoint after every epoch
    cache_features: bool = True  # linear probe: compute the frozen backbone's features once per split
    merge_for_test: bool = True  # test with the adapter folded into the weights (LoRA, DoRA, VeRA, IA3, PVeRA mean)
    bf16: bool = False  # bf16 autocast for forward passes
    compile: bool = False  # torch.compile the model
    progress: bool = True  # tqdm progress bars


@dataclass
class DataConfig:
    """Where the VTAB-1k task folders live and how they are decoded."""

    root: str = "data/vtab-1k"
    decode_workers: int = 4  # threads decoding images on first use
    cache: bool = True  # keep decoded splits in <task>/.cache/ and read them from there


@dataclass
class PathsConfig:
    results: str = "results/runs"


@dataclass
class RunConfig:
    """The composed config of one run."""

    adapter: Any = MISSING  # schema chosen by the adapter option, see pvera_bench.adapters
    dataset: DatasetConfig = MISSING
    backbone: BackboneConfig = MISSING
    sampling: SamplingConfig = MISSING
    protocol: ProtocolConfig = MISSING
    trainer: TrainerConfig = MISSING
    grid: dict[str, Any] = field(default_factory=dict)  # adapter name -> {config key: [values]}
    logger: Any = None  # _target_ of a pvera_bench.loggers class and its arguments
    data: DataConfig = field(default_factory=DataConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0


def register_configs() -> None:
    """Store the group schemas so that the YAML options can extend them."""
    from pvera_bench.adapters import ADAPTERS

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for group, node in [
        ("backbone", BackboneConfig),
        ("dataset", DatasetConfig),
        ("sampling", SamplingConfig),
        ("protocol", ProtocolConfig),
        ("trainer", TrainerConfig),
    ]:
        cs.store(group=f"schema/{group}", name="base", node=node)
    for name, spec in ADAPTERS.items():
        cs.store(group="schema/adapter", name=name, node=spec.config_cls(name=name))


def validate_adapter(cfg: DictConfig) -> None:
    from pvera_bench.adapters import ADAPTERS

    hparams = OmegaConf.to_container(cfg.adapter, resolve=True)
    name = hparams.pop("name", None)
    if name not in ADAPTERS:
        raise UserError(f"adapter.name={name!r} is not registered; choose one of {', '.join(sorted(ADAPTERS))}")
    try:
        ADAPTERS[name].config_cls(name=name, **hparams)
    except (TypeError, ValueError) as error:
        raise UserError(f"adapter={name}: {error}") from None


def validate(cfg: DictConfig) -> None:
    """Reject bad values and combinations in one line each, before anything is built."""
    validate_adapter(cfg)
    for point in grid_points(cfg):
        for key in point:
            if OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
                raise UserError(f"grid.{cfg.adapter.name}: {key} is not a config key")
        if point:
            validate_adapter(with_point(cfg, point))
    logger_target = (cfg.logger or {}).get("_target_", "pvera_bench.loggers.NullLogger")
    if not str(logger_target).startswith(LOGGER_MODULE):
        raise UserError(
            f"logger._target_={logger_target} is not a class of {LOGGER_MODULE}: configs are data, and only "
            "pvera_bench's own loggers are instantiated from them"
        )
    protocol, trainer = cfg.protocol, cfg.trainer
    checks = [
        (cfg.sampling.mode in SAMPLING_MODES, f"sampling.mode={cfg.sampling.mode} must be one of {SAMPLING_MODES}"),
        (cfg.sampling.n >= 1, f"sampling.n={cfg.sampling.n} must be >= 1"),
        (cfg.dataset.beta > 0, f"dataset.beta={cfg.dataset.beta} must be positive (the KL weight is 1/beta)"),
        (cfg.dataset.num_classes >= 2, f"dataset.num_classes={cfg.dataset.num_classes} must be >= 2"),
        (cfg.dataset.group in VTAB_GROUPS, f"dataset.group={cfg.dataset.group} must be one of {VTAB_GROUPS}"),
        (protocol.train_split in SPLITS, f"protocol.train_split={protocol.train_split} must be one of {SPLITS}"),
        (protocol.val_split in (*SPLITS, None), f"protocol.val_split={protocol.val_split} must be in {SPLITS} or null"),
        (
            protocol.retrain_split in (*SPLITS, None),
            f"protocol.retrain_split={protocol.retrain_split} must be in {SPLITS} or null",
        ),
        ("test" not in (protocol.train_split, protocol.val_split, protocol.retrain_split), "test data may only test"),
        (protocol.select_metric in SELECT_METRICS, f"protocol.select_metric must be one of {SELECT_METRICS}"),
        (protocol.patience >= 1, f"protocol.patience={protocol.patience} must be >= 1"),
        (
            0 <= protocol.min_rel_improvement < 1,
            f"protocol.min_rel_improvement={protocol.min_rel_improvement} must be in [0, 1)",
        ),
        (cfg.seed >= 0, f"seed={cfg.seed} must be >= 0"),
        (cfg.data.decode_workers >= 1, f"data.decode_workers={cfg.data.decode_workers} must be >= 1"),
        (
            cfg.backbone.img_size is None or cfg.backbone.img_size >= 1,
            f"backbone.img_size={cfg.backbone.img_size} must be >= 1 (or null for the model's own)",
        ),
        (
            protocol.val_split is not None or len(grid_points(cfg)) == 1,
            "a grid needs protocol.val_split to choose a point (or use grid=none)",
        ),
        (trainer.epochs >= 1, f"trainer.epochs={trainer.epochs} must be >= 1"),
        (trainer.batch_size >= 1, f"trainer.batch_size={trainer.batch_size} must be >= 1"),
        (trainer.eval_batch_size >= 1, f"trainer.eval_batch_size={trainer.eval_batch_size} must be >= 1"),
        (trainer.lr > 0, f"trainer.lr={trainer.lr} must be positive"),
        (trainer.weight_decay >= 0, f"trainer.weight_decay={trainer.weight_decay} must be >= 0"),
        (trainer.scheduler in ("constant", "cosine"), f"trainer.scheduler={trainer.scheduler} must be constant/cosine"),
        (
            0 <= trainer.warmup_epochs < trainer.epochs,
            f"trainer.warmup_epochs={trainer.warmup_epochs} must be in [0, trainer.epochs)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
