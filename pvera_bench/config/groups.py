"""Structured-config schemas of the Hydra groups and of the composed run: each default and each range check lives
here, once.

Each YAML option under ``pvera_bench/conf/<group>/`` is merged onto the schema of its group, so a misspelt key, a
value of the wrong type or an unknown mode fails when the config is composed; range checks run when the typed
config is built (``__post_init__``). Adapter schemas live with their adapters (:mod:`pvera_bench.adapters`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from pvera_bench.config.base import VTAB_GROUPS, SamplingMode, Scheduler, SelectMetric, Split, TaskGroup, require
from pvera_bench.config.grid import grid_points


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
    """One VTAB-1k task (or the offline demo task) in the folder layout of docs/data.md."""

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
    """The official PVeRA code's departures from its papers and from common practice (each listed with its source
    file in docs/reproduction.md), each off unless asked for; ``experiment=pvera_paper`` turns them all on. Every
    result lists those on."""

    double_softmax: bool = False  # E1: softmax before cross-entropy, in training and in the val loss that selects
    no_shuffle: bool = False  # E7: the train split in the same order every epoch
    joint_early_stopping: bool = False  # grid points train in lockstep until all are stale; one global best epoch
    lora_same_a_every_block: bool = False  # E9: every block's LoRA starts from the same A
    dora_frozen_magnitude: bool = False  # E2a: DoRA's magnitudes do not train
    dora_unscaled: bool = False  # E2b: DoRA's update is not scaled by alpha / r
    dora_transposed_update: bool = False  # E2c: DoRA's update is (B A)^T: the zero factor projects down
    dora_column_norm: bool = False  # E2e: DoRA's norm and magnitude are per input column
    hub_pos_embed: bool = False  # torch.hub DINOv2: position embeddings resized bicubic, no antialias, +0.1 offset
    bilinear_resize: bool = False  # images resized bilinearly (torchvision's Resize) whatever the backbone's default


# quirk -> (adapter, config field it sets): the official code's adapter bugs, applied where the adapter has them
ADAPTER_QUIRKS = {
    "lora_same_a_every_block": ("lora", "same_a_every_block"),
    "dora_frozen_magnitude": ("dora", "frozen_magnitude"),
    "dora_unscaled": ("dora", "unscaled"),
    "dora_transposed_update": ("dora", "transposed_update"),
    "dora_column_norm": ("dora", "column_norm"),
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
    warmup_epochs: int = 0  # linear lr warm-up; one as long as training (or longer) lasts the whole run
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    checkpoint: bool = True  # save a resumable checkpoint after every epoch
    cache_features: bool = True  # linear probe: compute the frozen backbone's features once per split
    merge_for_test: bool = True  # test with the adapter folded into the weights (LoRA, DoRA, VeRA, IA3, PVeRA mean)
    bf16: bool = False  # bf16 autocast for forward passes
    compile: bool = False  # torch.compile the model
    pack: bool = True  # train a run's grid points in one forward through the frozen backbone (training/packed.py)
    progress: bool = True  # tqdm progress bars

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.scheduler)
        require(self.epochs >= 1, f"trainer.epochs={self.epochs} must be >= 1")
        require(self.batch_size >= 1, f"trainer.batch_size={self.batch_size} must be >= 1")
        require(self.eval_batch_size >= 1, f"trainer.eval_batch_size={self.eval_batch_size} must be >= 1")
        require(self.lr > 0, f"trainer.lr={self.lr} must be positive")
        require(self.weight_decay >= 0, f"trainer.weight_decay={self.weight_decay} must be >= 0")
        require(
            self.warmup_epochs >= 0,
            f"trainer.warmup_epochs={self.warmup_epochs} must be >= 0",
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
    """Split conformal prediction calibrated on val200 (LAC, APS, RAPS); see :mod:`pvera_bench.evaluation.conformal`."""

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


LOGGER_MODULE = "pvera_bench.training.loggers."


@dataclass
class RunConfig:
    """The composed config of one run; building it checks every group, and the groups against each other where
    no registry is needed (the grid points and OOD tasks are checked by :func:`pvera_bench.pipeline.validate`)."""

    adapter: Any = MISSING  # schema chosen by the adapter option, see pvera_bench.adapters
    dataset: DatasetConfig = MISSING
    backbone: BackboneConfig = MISSING
    sampling: SamplingConfig = MISSING
    protocol: ProtocolConfig = MISSING
    trainer: TrainerConfig = MISSING
    grid: dict[str, Any] = field(default_factory=dict)  # adapter name -> {config key: [values]}
    logger: Any = None  # _target_ of a pvera_bench.training.loggers class and its arguments
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
