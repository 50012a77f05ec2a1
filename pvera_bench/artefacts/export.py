"""Export a run's adapter as a Hugging Face PEFT adapter folder, and optionally push it to the hub.

    pvera-bench export results/runs/<backbone>/<task>/<run>.json --out peft_adapter/
    pvera-bench export <run>.adapter.safetensors --out peft_adapter/ --push-to-hub user/repo

The folder (``adapter_config.json``, ``adapter_model.safetensors`` and PEFT's ``README.md``) is for the run's timm
ViT with every fused ``attn.qkv`` split into ``q``, ``k``, ``v`` Linears by
:func:`pvera_bench.models.peft_compat.split_qkv`, which is how PEFT can adapt q and v alone; the trained head
travels as ``modules_to_save=["head"]``::

    from peft import PeftModel
    from pvera_bench.artefacts.adapter_file import artefact_backbone
    from pvera_bench.models.backbone import random_weights_expected
from pvera_bench.models.peft_compat import split_qkv

    model = PeftModel.from_pretrained(split_qkv(artefact_backbone("<run>.adapter.safetensors")), "peft_adapter/")

What maps to what:

- LoRA and DoRA: ``LoraConfig`` (``use_dora`` for DoRA) with ``lora_alpha`` = the run's ``alpha`` (``r`` for the
  official code's unscaled DoRA, ``quirks.dora_unscaled``). Both conventions export: they differ only in how the
  tensors start, which PEFT does not need. A frozen DoRA magnitude (``quirks.dora_frozen_magnitude``) exports as
  PEFT's magnitude, with the same value (trainable again if one trains on). The official code's transposed
  update and per-column norm (``quirks.dora_transposed_update``, ``quirks.dora_column_norm``) are refused.
- VeRA: ``VeraConfig`` with the run's random projections saved in the folder (``save_projection=True``), and
  ``alpha`` folded into ``lambda_b`` (PEFT's VeRA has no alpha).
- PVeRA: PEFT's own ``PveraConfig`` (the mean and the log-variance rows, ``sample_at_inference=False``: eval
  predicts with the mean latent, as ``sampling=mean``), or with ``pvera_as="vera"`` a ``VeraConfig`` holding its
  mean-latent update only (the first r rows of A and entries of d), for PEFT versions without PVeRA.
- IA3: ``IA3Config`` with the feed-forward targets as ``feedforward_modules``.

VeRA and PVeRA trained under ``adapter.convention=official`` are refused: they use one random pair per adapted
slice (q and v), and PEFT's model shares one pair between every layer. Other adapters (linear probe, bottleneck,
AdaptFormer, full fine-tuning) have no PEFT counterpart here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pvera_bench.adapters import AdaptedLayer, adapter_config
from pvera_bench.adapters.layers import QKV_NAMES
from pvera_bench.artefacts.adapter_file import artefact_backbone, load_adapter, read_artefact, resolve_artefact
from pvera_bench.artefacts.model_card import hub_model_id, model_card
from pvera_bench.core.errors import UserError
from pvera_bench.models.backbone import random_weights_expected
from pvera_bench.models.peft_compat import split_qkv

EXPORTABLE = ("lora", "dora", "vera", "pvera", "ia3")
PVERA_AS = ("pvera", "vera")
ADAPTER = "default"  # PEFT's adapter name in the model; the saved keys do not contain it


def import_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise UserError(
            "exporting needs Hugging Face PEFT: pip install peft (or the dev extra of pvera-bench)"
        ) from None
    return peft


def peft_targets(info: dict[str, Any]) -> list[str]:
    """PEFT ``target_modules`` (suffixes of module names) of the adapter's targets in a split-qkv model."""
    config = info["adapter"]
    names = []
    for path in config["targets"]:
        if path.split(".")[-1] != "qkv":
            names.append(path)
        elif config["qkv_slices"] is None:
            raise UserError(
                f"adapter {config['name']} adapts the fused {path} as one layer (adapter.qkv_slices=null), which PEFT "
                "cannot express on the split q, k, v Linears; train with qkv_slices set (e.g. [q, v]) to export"
            )
        else:
            names += [f"{path}.{s}" for s in config["qkv_slices"]]
    return sorted(names)


def check_exportable(info: dict[str, Any], projections: torch.Tensor | None) -> None:
    name, convention = info["adapter"]["name"], info["adapter"]["convention"]
    if name not in EXPORTABLE:
        raise UserError(f"adapter {name} has no PEFT export; exportable adapters: {', '.join(EXPORTABLE)}")
    official_layout = [key for key in ("transposed_update", "column_norm") if info["adapter"].get(key)]
    if official_layout:
        raise UserError(
            f"adapter {name} was trained with adapter.{official_layout[0]} (the official code's DoRA, "
            f"quirks.dora_{official_layout[0]}), which PEFT's DoRA cannot express: train without it to export"
        )
    if projections is not None and projections.shape[0] != 1:
        raise UserError(
            f"adapter {name} was trained under adapter.convention={convention}, which draws one random projection "
            "pair per adapted slice (q and v); PEFT shares one pair between every layer and cannot express it: "
            "train with adapter.convention=peft to export"
        )


def peft_config(peft: Any, info: dict[str, Any], pvera_as: str) -> Any:
    """The PEFT config that expresses the artefact's adapter (the head as ``modules_to_save``)."""
    config, targets = info["adapter"], peft_targets(info)
    name = config["name"]
    common = {"target_modules": targets, "modules_to_save": ["head"]}
    if name in ("lora", "dora"):
        alpha = config["r"] if config.get("unscaled") else config["alpha"]
        return peft.LoraConfig(
            r=config["r"], lora_alpha=alpha, lora_dropout=config["dropout"], use_dora=name == "dora", **common
        )
    if name == "ia3":
        feedforward = [t for t in targets if t in config["feedforward"]]
        return peft.IA3Config(feedforward_modules=feedforward, **common)
    projection = {
        "r": config["r"],
        "projection_prng_key": config["projection_seed"] or 0,
        "save_projection": True,  # the run's projections travel with the adapter: nothing is regenerated
        "d_initial": 0.1 if config["d_initial"] is None else config["d_initial"],
    }
    if name == "vera" or pvera_as == "vera":
        return peft.VeraConfig(vera_dropout=config["dropout"], **projection, **common)
    if not hasattr(peft, "PveraConfig"):
        raise UserError(
            f"the installed peft {peft.__version__} has no PVeRA; upgrade peft, or export with --pvera-as vera "
            "(the mean-latent update as a VeRA adapter)"
        )
    return peft.PveraConfig(pvera_dropout=config["dropout"], sample_at_inference=False, **projection, **common)


def copy_into(target: torch.Tensor, value: torch.Tensor, what: str) -> None:
    if target.shape != value.shape:
        raise ValueError(f"{what}: PEFT has {tuple(target.shape)}, the adapter {tuple(value.shape)}")
    target.copy_(value)


def peft_modules(reference: nn.Module, name: str, layer: nn.Module) -> list[nn.Module]:
    """PEFT's layer for each output slice of our ``layer`` at ``name``: ``name.q``/``name.v`` of a split qkv, or
    ``name`` itself."""
    model = reference.base_model.model
    if name.split(".")[-1] != "qkv":
        return [model.get_submodule(name)]
    width = layer.base_layer.out_features // 3
    return [model.get_submodule(f"{name}.{QKV_NAMES[start // width]}") for start, _ in layer.slices]


def copy_adapter(ours: nn.Module, reference: nn.Module, pvera_as: str) -> None:
    """Copy every trained tensor of ``ours`` into PEFT's ``reference`` (same backbone, qkv split)."""
    config = adapter_config(ours)
    name = config.name
    kind = "vera" if name == "pvera" and pvera_as == "vera" else name  # PEFT's names for the exported tensors
    projections = None
    for module_name, layer in ours.named_modules():
        if not isinstance(layer, AdaptedLayer):
            continue
        for i, target in enumerate(peft_modules(reference, module_name, layer)):
            where = f"{module_name} slice {i}"
            if name in ("lora", "dora"):
                copy_into(target.lora_A[ADAPTER].weight, layer.lora_A[i], where)
                copy_into(target.lora_B[ADAPTER].weight, layer.lora_B[i], where)
                if name == "dora":
                    copy_into(target.lora_magnitude_vector[ADAPTER].weight, layer.lora_magnitude[i], where)
            elif name == "ia3":
                scale = layer.ia3_l.view(1, -1) if layer.feedforward else layer.ia3_l.view(len(layer.slices), -1, 1)[i]
                copy_into(target.ia3_l[ADAPTER], scale, where)
            else:  # vera, pvera: alpha folds into b (alpha * b * x is (alpha * b) * x in ours too)
                d, b = getattr(layer, f"{name}_lambda_d")[i], getattr(layer, f"{name}_lambda_b")[i]
                copy_into(getattr(target, f"{kind}_lambda_d")[ADAPTER], d[: layer.r] if kind != name else d, where)
                copy_into(getattr(target, f"{kind}_lambda_b")[ADAPTER], layer.alpha * b, where)
                projections = layer.projections
    if projections is not None:
        A = projections.A[0, : config.r] if kind != name else projections.A[0]
        copy_into(getattr(reference.base_model, f"{kind}_A")[ADAPTER], A, "random projection A")
        copy_into(getattr(reference.base_model, f"{kind}_B")[ADAPTER], projections.B[0], "random projection B")
    model = reference.base_model.model
    for key, value in ours.head.state_dict().items():
        copy_into(model.head.modules_to_save[ADAPTER].get_parameter(key), value, f"head.{key}")


def export_peft(artefact: str | Path, out_dir: str | Path, pvera_as: str = "pvera") -> Path:
    """Write the artefact's adapter and head as a PEFT adapter folder ``out_dir`` for the split-qkv timm model.

    Args:
        artefact: an ``.adapter.safetensors`` file, or a result JSON naming one.
        pvera_as: ``pvera`` (PEFT's PVeRA) or ``vera`` (the mean-latent update as a VeRA adapter).

    Returns:
        ``out_dir``.
    """
    if pvera_as not in PVERA_AS:
        raise UserError(f"pvera_as={pvera_as!r}: expected one of {', '.join(PVERA_AS)}")
    peft = import_peft()
    path = resolve_artefact(artefact)
    info, tensors = read_artefact(path)
    check_exportable(info, next((tensors[n] for n in info["projections"] if n.endswith(".A")), None))
    with random_weights_expected():
        backbone = artefact_backbone(path, pretrained=False)  # the structure only: no backbone weight is exported
    ours = load_adapter(copy.deepcopy(backbone), path, verify_backbone=False)
    config = peft_config(peft, info, pvera_as)
    config.base_model_name_or_path = hub_model_id(info["backbone"])
    reference = peft.get_peft_model(split_qkv(backbone), config)
    adapter_state = peft.get_peft_model_state_dict(reference)
    with torch.no_grad():
        for tensor in adapter_state.values():  # poison: every tensor PEFT saves must be overwritten below
            tensor.fill_(float("nan"))
        copy_adapter(ours, reference, pvera_as)
    unset = [key for key, tensor in peft.get_peft_model_state_dict(reference).items() if tensor.isnan().any()]
    if unset:
        raise RuntimeError(f"export left PEFT tensors unset: {unset[:3]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "README.md").write_text(model_card(info, path, config))  # PEFT adds its metadata to it
    reference.save_pretrained(str(out_dir))
    return out_dir
