"""Structured-config schemas for every Hydra group: each default and each check lives here, once.

Each YAML option under ``conf/<group>/`` is merged onto the schema of its group, so a
misspelt key, a value of the wrong type or an unknown mode fails when the config is
composed. Range checks and checks across groups run when the typed config is built
(``__post_init__``); :func:`validate` builds it and reports the first problem in one line.
Adapter schemas live with their adapters (``pvera_bench.adapters``) and are registered
under ``schema/adapter/<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pvera_bench.cli import one_line
from pvera_bench.data.vtab import SPLITS
from pvera_bench.errors import UserError
from pvera_bench.grid import grid_points

if TYPE_CHECKING:
    from pvera_bench.adapters import AdapterConfig

LOGGER_MODULE = "pvera_bench.loggers."


class SamplingMode(StrEnum):
    """PVeRA's test-time latent: mu, one draw, mu + sigma, the mean prediction of n passes (``mc``), or one
    pass whose layers each average n latent draws (``mc_layer``, the official code's N-sample mode)."""

    mean = "mean"
    random = "random"
    fixed = "fixed"
    mc = "mc"
    mc_layer = "mc_layer"


class Scheduler(StrEnum):
    constant = "constant"
    cosine = "cosine"


class SelectMetric(StrEnum):
    """What picks the grid point: the lowest val loss or the highest val accuracy."""

    nll = "nll"
    top1 = "top1"


class TaskGroup(StrEnum):
    """The VTAB-1k group of a task; ``demo`` tasks are outside the 19."""

    natural = "natural"
    specialized = "specialized"
    structured = "structured"
    demo = "demo"


# Old protocol names, still accepted (conf/protocol/<old>.yaml includes the new option) and read in old results.
RENAMED_PROTOCOLS = {"pvera": "early_stop"}  # "pvera" read as the adapter PVeRA

Split = StrEnum("Split", {split: split for split in SPLITS})  # the split files of a VTAB-1k task folder
VTAB_GROUPS = (TaskGroup.natural, TaskGroup.specialized, TaskGroup.structured)


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``: the one-line form of every schema check."""
    if not ok:
        raise ValueError(message)


@dataclass
class BackboneConfig:
    """A timm backbone, frozen by the adapter."""

    id: str = MISSING  # short name used in result paths and tables
    name: str = MISSING  # timm model name, e.g. vit_base_patch16_224.orig_in21k
    pretrained: bool = True
    weights: str | None = None  # local weights file, loaded through timm's pretrained_cfg overlay
    img_size: int | None = None  # input resolution; None keeps the model's default
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm constructor arguments

    def __post_init__(self) -> None:
        require(
            self.img_size is None or self.img_size >= 1,
            f"backbone.img_size={self.img_size} must be >= 1 (or null for the model's own)",
        )


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

    name: str = MISSING  # folder name under data.root (and in result paths): NOAH/RepAdapter's names
    label: str = MISSING  # column header in the tables, e.g. CIFAR-100
    num_classes: int = MISSING
    group: TaskGroup = MISSING
    order: int | None = None  # column of a VTAB-1k task in the tables (1-19); null for demo tasks
    beta: float = MISSING  # PVeRA's KL weight is 1/beta: a value per task, from the official code
    tfds: TfdsSource | None = None  # None: not built from TFDS (mnist5k)

    def __post_init__(self) -> None:
        require(self.num_classes >= 2, f"dataset.num_classes={self.num_classes} must be >= 2")
        require(self.beta > 0, f"dataset.beta={self.beta} must be positive (the KL weight is 1/beta)")
        require(
            (self.order is not None) == (self.group in VTAB_GROUPS),
            f"dataset {self.name}: a VTAB-1k task needs dataset.order (its table column), a demo task none",
        )


@dataclass
class SamplingConfig:
    """PVeRA's test-time sampling mode; ignored by deterministic adapters."""

    mode: SamplingMode = MISSING  # each option of the sampling group names its mode
    n: int = 1  # stochastic forward passes (mode=mc), or latent draws averaged in each layer (mode=mc_layer)

    def __post_init__(self) -> None:
        self.mode = SamplingMode(self.mode)
        require(self.n >= 1, f"sampling.n={self.n} must be >= 1")


@dataclass
class ProtocolConfig:
    """Which split trains, which selects among the grid points, and which (if any) retrains the choice.

    Every point of the adapter's grid (the ``grid`` group) is trained on ``train_split`` and scored on ``val_split``;
    the best point (``select_metric``) is tested as trained, or trained again from scratch on
    ``retrain_split`` first. Test data are read only after that. The defaults are the PVeRA paper's code.
    """

    name: str = MISSING
    train_split: Split = Split.train800
    val_split: Split | None = Split.val200  # evaluated every epoch; None: no validation
    retrain_split: Split | None = None  # e.g. train800val200: retrain the chosen point on it, then test
    early_stopping: bool = True  # stop on val loss and restore the best epoch's weights
    patience: int = 20  # epochs without a relative val-loss improvement before stopping
    min_rel_improvement: float = 1e-3  # 0.1 %: what counts as an improvement
    select_metric: SelectMetric = SelectMetric.nll

    def __post_init__(self) -> None:
        self.select_metric = SelectMetric(self.select_metric)
        require(Split.test not in (self.train_split, self.val_split, self.retrain_split), "test data may only test")
        require(self.patience >= 1, f"protocol.patience={self.patience} must be >= 1")
        require(
            0 <= self.min_rel_improvement < 1,
            f"protocol.min_rel_improvement={self.min_rel_improvement} must be in [0, 1)",
        )


@dataclass
class QuirksConfig:
    """The official PVeRA code's departures from its papers and from common practice (reference/pvera.md §5.1,
    §8), each off unless asked for; ``experiment=pvera_paper`` turns them all on. Every result lists those on."""

    double_softmax: bool = False  # E1: softmax before cross-entropy, in training and in the val loss that selects
    no_shuffle: bool = False  # E7: the train split in the same order every epoch
    joint_early_stopping: bool = False  # grid points train in lockstep until all are stale; one global best epoch
    lora_same_a_every_block: bool = False  # E9: every block's LoRA starts from the same A
    dora_frozen_magnitude: bool = False  # E2a: DoRA's magnitudes do not train
    dora_unscaled: bool = False  # E2b: DoRA's update is not scaled by alpha / r
    hub_pos_embed: bool = False  # torch.hub DINOv2: position embeddings resized bicubic, no antialias, +0.1 offset
    bilinear_resize: bool = False  # images resized bilinearly (torchvision's Resize) whatever the backbone's default


# quirk -> (adapter, config field it sets): the official code's adapter bugs, applied where the adapter has them
ADAPTER_QUIRKS = {
    "lora_same_a_every_block": ("lora", "same_a_every_block"),
    "dora_frozen_magnitude": ("dora", "frozen_magnitude"),
    "dora_unscaled": ("dora", "unscaled"),
}


@dataclass
class TrainerConfig:
    """Optimisation and runtime settings shared by every adapter; the defaults are the PVeRA paper's."""

    epochs: int = 500
    batch_size: int = 16
    eval_batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-4
    scheduler: Scheduler = Scheduler.constant
    warmup_epochs: int = 0
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    checkpoint: bool = True  # save a resumable checkpoint after every epoch
    cache_features: bool = True  # linear probe: compute the frozen backbone's features once per split
    merge_for_test: bool = True  # test with the adapter folded into the weights (LoRA, DoRA, VeRA, IA3, PVeRA mean)
    bf16: bool = False  # bf16 autocast for forward passes
    compile: bool = False  # torch.compile the model
    progress: bool = True  # tqdm progress bars

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.scheduler)
        require(self.epochs >= 1, f"trainer.epochs={self.epochs} must be >= 1")
        require(self.batch_size >= 1, f"trainer.batch_size={self.batch_size} must be >= 1")
        require(self.eval_batch_size >= 1, f"trainer.eval_batch_size={self.eval_batch_size} must be >= 1")
        require(self.lr > 0, f"trainer.lr={self.lr} must be positive")
        require(self.weight_decay >= 0, f"trainer.weight_decay={self.weight_decay} must be >= 0")
        require(
            0 <= self.warmup_epochs < self.epochs,
            f"trainer.warmup_epochs={self.warmup_epochs} must be in [0, trainer.epochs)",
        )


@dataclass
class DataConfig:
    """Where the VTAB-1k task folders live and how they are decoded."""

    root: str = "data/vtab-1k"  # <root>/<task>/{train800,val200,train800val200,test}.txt
    decode_workers: int = 4  # threads decoding images on first use
    cache: bool = True  # decoded uint8 tensors in <root>/<task>/.cache/, rebuilt when the source changes

    def __post_init__(self) -> None:
        require(self.decode_workers >= 1, f"data.decode_workers={self.decode_workers} must be >= 1")


@dataclass
class OodConfig:
    """Out-of-distribution detection: after its test, the run's model also predicts the test images of other
    tasks (resized to its input), and the result reports how well its confidence separates the two.

    ``tasks`` names dataset options (``svhn``) or folders, or ``near`` (the other tasks of the run's VTAB-1k
    group) and ``far`` (the tasks of the other groups); empty: no OOD pass.
    """

    tasks: list[str] = field(default_factory=list)
    max_images: int = 500  # per OOD task: a fixed random subset of its test split, the same for every run

    def __post_init__(self) -> None:
        require(self.max_images >= 1, f"ood.max_images={self.max_images} must be >= 1")


@dataclass
class ConformalConfig:
    """Split conformal prediction calibrated on val200 (LAC, APS, RAPS); see :mod:`pvera_bench.conformal`."""

    miscoverage: float = 0.1  # alpha: the sets should contain the true class of 1 - alpha of the test images
    raps_lambda: float = 0.01  # RAPS's penalty per class ranked beyond raps_k_reg
    raps_k_reg: int = 1

    def __post_init__(self) -> None:
        require(0 < self.miscoverage < 1, f"conformal.miscoverage={self.miscoverage} must be in (0, 1)")
        require(self.raps_lambda >= 0, f"conformal.raps_lambda={self.raps_lambda} must be >= 0")
        require(self.raps_k_reg >= 0, f"conformal.raps_k_reg={self.raps_k_reg} must be >= 0")


@dataclass
class PathsConfig:
    results: str = "results/runs"  # one JSON per run, see results/README.md


@dataclass
class RunConfig:
    """The composed config of one run; building it checks every group and the groups against each other."""

    adapter: Any = MISSING  # schema chosen by the adapter option, see pvera_bench.adapters
    dataset: DatasetConfig = MISSING
    backbone: BackboneConfig = MISSING
    sampling: SamplingConfig = MISSING
    protocol: ProtocolConfig = MISSING
    trainer: TrainerConfig = MISSING
    grid: dict[str, Any] = field(default_factory=dict)  # adapter name -> {config key: [values]}
    logger: Any = None  # _target_ of a pvera_bench.loggers class and its arguments
    quirks: QuirksConfig = field(default_factory=QuirksConfig)
    ood: OodConfig = field(default_factory=OodConfig)
    conformal: ConformalConfig = field(default_factory=ConformalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.seed >= 0, f"seed={self.seed} must be >= 0")
        logger_target = str((self.logger or {}).get("_target_", f"{LOGGER_MODULE}NullLogger"))
        require(
            logger_target.startswith(LOGGER_MODULE),
            f"logger._target_={logger_target} is not a class of {LOGGER_MODULE}: configs are data, and only "
            "pvera_bench's own loggers are instantiated from them",
        )
        points = grid_points(self)
        for point in points:
            self.check_grid_point(point)
        require(
            self.protocol.val_split is not None or len(points) == 1,
            "a grid needs protocol.val_split to choose a point (or use grid=none)",
        )
        require(
            not self.quirks.joint_early_stopping
            or (self.protocol.early_stopping and self.protocol.select_metric == SelectMetric.nll),
            "quirks.joint_early_stopping needs protocol.early_stopping=true and protocol.select_metric=nll "
            "(the official code's selection); use protocol=early_stop",
        )
        if self.ood.tasks:
            from pvera_bench.data.tasks import ood_tasks

            ood_tasks(self.ood, self.dataset)  # a bad task name fails here, before anything is built

    def check_grid_point(self, point: Mapping[str, Any]) -> None:
        """Every key of a grid point is a config key, and the adapter it gives is a valid one."""
        for key in point:
            require(has_key(self, key), f"grid.{self.adapter.name}: {key} is not a config key")
        adapter_values = {key.removeprefix("adapter."): v for key, v in point.items() if key.startswith("adapter.")}
        if adapter_values:
            adapter_config({**asdict(self.adapter), **adapter_values})


def has_key(node: Any, dotted_key: str) -> bool:
    """Whether ``a.b.c`` names a field (or dict key) of a typed config."""
    for part in dotted_key.split("."):
        if is_dataclass(node) and part in {f.name for f in fields(node)}:
            node = getattr(node, part)
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return False
    return True


def adapter_config(hparams: Mapping[str, Any]) -> AdapterConfig:
    """The adapter's config dataclass built from its fields (``name`` included); ValueError names the adapter."""
    from pvera_bench.adapters import ADAPTERS

    name = hparams.get("name")
    require(name in ADAPTERS, f"adapter.name={name!r} is not registered; choose one of {', '.join(sorted(ADAPTERS))}")
    try:
        return ADAPTERS[name].config_cls(**hparams)
    except (TypeError, ValueError) as error:
        raise ValueError(f"adapter={name}: {error}") from None


def validate(cfg: DictConfig) -> RunConfig:
    """The typed config of a composed one; bad values and combinations end in a one-line UserError."""
    try:
        adapter_config(OmegaConf.to_container(cfg.adapter, resolve=True))  # first: its message names the adapter
        return OmegaConf.to_object(cfg)
    except (TypeError, ValueError) as error:
        raise UserError(str(error)) from None
    except OmegaConfBaseException as error:
        raise UserError(one_line(error)) from None


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
        ("ood", OodConfig),
    ]:
        cs.store(group=f"schema/{group}", name="base", node=node)
    for name, spec in ADAPTERS.items():
        cs.store(group="schema/adapter", name=name, node=spec.config_cls(name=name))
