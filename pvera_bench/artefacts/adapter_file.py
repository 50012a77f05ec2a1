"""A run's trained adapter as a file: ``RunFiles(result).adapter`` (``<name>.adapter.safetensors``) beside its
result JSON.

The file holds what the run trained and nothing of the frozen backbone:

- every trainable tensor outside the head (``lora_A``, ``vera_lambda_d``, ...) and the adapter's own frozen
  buffers (DoRA's magnitude when frozen, AdaptFormer's scale);
- the frozen random projections of VeRA and PVeRA (``...projections.A`` and ``.B``, once: every layer shares
  them). Under ``adapter.convention=official`` they are drawn from torch's global RNG when the model is built,
  so they cannot be regenerated from a seed of their own; storing them makes every convention exact;
- the classification head (``head.weight``, ``head.bias``).

Its safetensors header carries, under the metadata key ``pvera_bench``, a JSON description: the adapter's full
config (every field, its convention included), the backbone as the run created it (timm name, ``img_size``,
``model_kwargs``, ``pretrained``, ``weights``, ``hub_pos_embed``), ``num_classes``, the run seed, the test-time
sampling, and ``backbone_sha256``, a digest of the frozen backbone weights the adapter was trained on, which
:func:`load_adapter` checks. A randomly initialised backbone (``backbone.pretrained=false``, the demo's tiny
ViT) is not stored: its weights come from the run seed, and :func:`artefact_backbone` recreates them by
seeding torch's CPU generator with it before timm builds the model, as the run does; the digest proves it.

The description travels in the same file as the tensors, so the two cannot be separated or mismatched.
Full fine-tuning (``adapter=full``) saves nothing: its "adapter" is a copy of the whole backbone (about
330 MB for ViT-B), which the results folder is not meant to hold; its result says ``adapter_file: null``.

    >>> from pvera_bench.artefacts.adapter_file import build_from_artefact
    >>> model = build_from_artefact("results/runs/tiny/mnist5k/lora__mean__early_stop__s0__1a2b3c4d.json")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from pvera_bench.adapters import ADAPTERS, AdaptedLayer, adapter_config, apply_adapter
from pvera_bench.artefacts.layout import ADAPTER_SUFFIX, RunFiles, read_result
from pvera_bench.artefacts.provenance import package_versions
from pvera_bench.config import BackboneConfig
from pvera_bench.core.errors import UserError
from pvera_bench.core.files import write_atomically
from pvera_bench.models.backbone import create_backbone

log = logging.getLogger(__name__)

METADATA_KEY = "pvera_bench"
FORMAT_VERSION = 1


def saves_adapter(model: nn.Module) -> bool:
    """Whether a run of this model saves an artefact: every adapter but full fine-tuning (see the module doc)."""
    config = adapter_config(model)
    return config is not None and ADAPTERS[config.name].prefix != "*"


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an artefact of ``model`` holds, by their name in the model: the trainable ones (adapter and
    head) and the buffers the adapter layers add (shared ones once, under their first name)."""
    if adapter_config(model) is None:
        raise ValueError("model has no adapter (none applied, or merged): save the unmerged model")
    tensors: dict[str, torch.Tensor] = {n: p for n, p in model.named_parameters() if p.requires_grad}
    seen = {id(t) for t in tensors.values()}
    for module_name, module in model.named_modules():
        if not isinstance(module, AdaptedLayer):
            continue
        for name, buffer in module.named_buffers(prefix=module_name):
            if ".base_layer." not in name and id(buffer) not in seen:
                tensors[name] = buffer
                seen.add(id(buffer))
    return tensors


def backbone_digest(model: nn.Module, skip: set[str]) -> str:
    """SHA-256 of every state-dict tensor of ``model`` outside ``skip`` (the artefact's): the frozen backbone."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in skip:
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name.replace('base_layer.', '')}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_adapter(model: nn.Module, path: Path, info: dict[str, Any]) -> Path:
    """Write ``model``'s artefact atomically to ``path``; ``info`` (``backbone``, ``num_classes``, ``seed``, ...)
    joins the adapter config and the backbone digest in the header. Returns ``path``."""
    tensors = adapter_tensors(model)
    config = adapter_config(model)
    header = {
        "format_version": FORMAT_VERSION,
        "adapter": asdict(config),
        **info,
        "projections": sorted(n for n in tensors if ".projections." in n),
        "backbone_sha256": backbone_digest(model, set(tensors)),
        "versions": package_versions(),
    }
    stored = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    write_atomically(path, save(stored, metadata={"format": "pt", METADATA_KEY: json.dumps(header)}))
    return path


def save_run_adapter(result: Path, model: nn.Module, cfg: DictConfig) -> Path | None:
    """Save the tested (unmerged) model's adapter and head beside the run's result; None for full fine-tuning."""
    if not saves_adapter(model):
        log.info("adapter=%s trains the whole backbone: no adapter file is saved", cfg.adapter.name)
        return None
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    info = {
        "backbone": {**backbone, "hub_pos_embed": bool(cfg.quirks.hub_pos_embed)},
        "num_classes": int(cfg.dataset.num_classes),
        "seed": int(cfg.seed),
        "sampling": {"mode": str(cfg.sampling.mode), "n": int(cfg.sampling.n)},
        "dataset": cfg.dataset.name,
        "result": result.name,
    }
    return save_adapter(model, RunFiles(result).adapter, info)


def resolve_artefact(path: str | Path) -> Path:
    """The artefact file named by ``path``: an ``.adapter.safetensors`` file, or a result JSON naming one."""
    path = Path(path)
    if path.suffix != ".json":
        return path
    record = read_result(path)
    if "adapter_file" not in record:
        raise UserError(f"{path}: not a result with an adapter_file; pass the run's {ADAPTER_SUFFIX} file instead")
    if record["adapter_file"] is None:
        raise UserError(f"{path}: this run (adapter={record.get('adapter')}) saved no adapter file")
    return path.with_name(record["adapter_file"])


def open_artefact(path: Path):
    """``safe_open`` on an artefact, with a one-line UserError when it is missing or unreadable."""
    try:
        return safe_open(str(path), framework="pt")
    except FileNotFoundError:
        raise UserError(
            f"{path}: no such adapter file; pass the {ADAPTER_SUFFIX} file a run wrote (its adapter_file)"
        ) from None
    except (OSError, SafetensorError) as error:
        raise UserError(f"{path}: not a readable safetensors file ({error}); rerun the run to write it again") from None


def artefact_info(path: str | Path) -> dict[str, Any]:
    """The header description of an artefact (or of the one a result JSON names), without its tensors."""
    path = resolve_artefact(path)
    with open_artefact(path) as f:
        header = (f.metadata() or {}).get(METADATA_KEY)
    if header is None:
        raise UserError(f"{path}: a safetensors file without pvera_bench's description: not an adapter artefact")
    info = json.loads(header)
    if info.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: artefact format {info.get('format_version')}, this pvera_bench reads {FORMAT_VERSION}; "
            "load it with the pvera_bench version that wrote it"
        )
    return info


def read_artefact(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The header description and the tensors (on the CPU) of an artefact, or of the one a result JSON names."""
    path = resolve_artefact(path)
    info = artefact_info(path)
    with open_artefact(path) as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    return info, tensors


@contextlib.contextmanager
def cpu_seed(seed: int) -> Iterator[None]:
    """Within the block, torch's CPU generator starts from ``seed`` (as ``seed_everything`` leaves it); then it
    is restored (``torch.random.fork_rng``), so loading an artefact leaves the caller's random stream untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def artefact_backbone(path: str | Path, pretrained: bool | None = None, weights: str | None = None) -> nn.Module:
    """The timm model (no adapter) that the run adapted, created as the run created it, on the CPU.

    Args:
        pretrained: overrides the artefact's ``backbone.pretrained`` (e.g. False to skip a download).
        weights: a local weights file to read instead of the artefact's ``backbone.weights``.
    """
    info = artefact_info(path)
    backbone = dict(info["backbone"])
    hub_pos_embed = backbone.pop("hub_pos_embed", False)
    if pretrained is not None:
        backbone["pretrained"] = pretrained
        backbone["weights"] = None if not pretrained else backbone.get("weights")
    if weights is not None:
        backbone["weights"] = weights
    with cpu_seed(info["seed"]):  # a random-init backbone gets the run's weights: the run seeds before timm
        return create_backbone(BackboneConfig(**backbone), info["num_classes"], hub_pos_embed=hub_pos_embed)


def load_adapter(model: nn.Module, path: str | Path, verify_backbone: bool = True) -> nn.Module:
    """Apply the artefact's adapter to ``model`` (a fresh timm model of the run's architecture) and load its tensors.

    Strict: every saved tensor must land on a tensor of the same shape, and every tensor the adapter and head need
    must be saved. With ``verify_backbone`` the model's frozen weights must be those the adapter was trained on
    (``backbone_sha256``). Returns the model, in eval mode, with the adapter applied (unmerged).
    """
    path = resolve_artefact(path)
    info, saved = read_artefact(path)
    config = dict(info["adapter"])
    name = config.pop("name")
    if name not in ADAPTERS:
        raise UserError(
            f"{path}: adapter {name!r} is not registered in this pvera_bench; use the version that wrote it"
        )
    backbone = info["backbone"]
    rebuild = f"create the model with pvera_bench.artefacts.build_from_artefact({str(path)!r})"
    device = next(model.parameters()).device
    try:
        with cpu_seed(info["seed"]):  # the adapter's initial draws are overwritten; keep the caller's RNG as it was
            apply_adapter(model, name, **config)
    except (ValueError, TypeError) as error:
        raise UserError(
            f"{path}: cannot apply adapter {name} to this {type(model).__name__} ({error}); pass a fresh timm "
            f"{backbone['name']} or {rebuild}"
        ) from None
    model.to(device)
    wanted = adapter_tensors(model)
    missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    if extra:
        raise UserError(
            f"{path}: {len(extra)} saved tensor(s) have no place in this model (e.g. {extra[0]}); it is not the "
            f"architecture the adapter was trained on (timm {backbone['name']}): {rebuild}"
        )
    if missing:
        raise UserError(
            f"{path}: the artefact lacks {len(missing)} tensor(s) the {name} adapter needs (e.g. {missing[0]}); it "
            "is incomplete or was written by another pvera_bench version: rerun the run to write it again"
        )
    for key, target in wanted.items():
        if saved[key].shape != target.shape:
            raise UserError(
                f"{path}: {key} is {tuple(saved[key].shape)} in the artefact but {tuple(target.shape)} in this model; "
                f"the adapter was trained on timm {backbone['name']} at img_size={backbone.get('img_size')} with "
                f"num_classes={info['num_classes']}: {rebuild}"
            )
    with torch.no_grad():
        for key, target in wanted.items():
            target.copy_(saved[key])
    if verify_backbone and backbone_digest(model, set(wanted)) != info["backbone_sha256"]:
        origin = (
            f"seed {info['seed']} (a randomly initialised backbone)"
            if not (backbone.get("pretrained") or backbone.get("weights"))
            else "its pretrained weights"
        )
        raise UserError(
            f"{path}: this model's frozen backbone weights differ from those the adapter was trained on (timm "
            f"{backbone['name']} from {origin}): {rebuild}, or pass verify_backbone=False to load it anyway"
        )
    return model.eval()


def build_from_artefact(
    path: str | Path, pretrained: bool | None = None, weights: str | None = None, verify_backbone: bool | None = None
) -> nn.Module:
    """The run's tested model, rebuilt: :func:`artefact_backbone` then :func:`load_adapter`, on the CPU, eval mode.

    Args:
        pretrained, weights: see :func:`artefact_backbone`.
        verify_backbone: check the backbone digest; None: check unless ``pretrained`` or ``weights`` asks for other
            weights than the run's.
    """
    model = artefact_backbone(path, pretrained, weights)
    if verify_backbone is None:
        backbone = artefact_info(path)["backbone"]
        verify_backbone = (pretrained is None or pretrained == backbone.get("pretrained")) and weights is None
    return load_adapter(model, path, verify_backbone=verify_backbone)
