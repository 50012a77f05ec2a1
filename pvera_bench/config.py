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
from omegaconf import MISSING

SAMPLING_MODES = ("mean", "random", "fixed", "mc")
VTAB_GROUPS = ("natural", "specialized", "structured", "demo")


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
