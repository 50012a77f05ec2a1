"""The registry's contract as a check you run on your own adapter, e.g. in your package's tests::

    from pvera_bench.testing import check_adapter

    def test_my_adapter_keeps_the_contract():
        check_adapter("my_adapter")            # or check_adapter("my_adapter", r=4): hyperparameters

:func:`check_adapter` applies the registered adapter to a small random timm ViT (the same architecture as ViT-B/16,
narrower) and checks every promise its :class:`~pvera_bench.adapters.AdapterSpec` makes. A broken promise raises
:class:`ContractError`, whose message names the adapter, the promise and what was seen.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from pvera_bench.adapters import (
    ADAPTERS,
    AdaptedLayer,
    adapter_loss,
    adapter_parameters,
    apply_adapter,
    copy_model,
    merge_adapter,
    sample_latents,
)
from pvera_bench.artefacts.adapter_file import load_adapter, save_adapter
from pvera_bench.config import BackboneConfig
from pvera_bench.models.backbone import create_backbone, random_weights_expected

TOLERANCE = 1e-5  # largest difference between outputs that must be equal
TINY_VIT = BackboneConfig(
    id="contract",
    name="vit_tiny_patch16_224",
    pretrained=False,
    img_size=32,
    model_kwargs={"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3},
)
NUM_CLASSES, SEED = 5, 0


class ContractError(AssertionError):
    """An adapter breaks a promise of the registry's contract."""


def tiny_backbone() -> nn.Module:
    """The random backbone the checks adapt, the same on every call; every tensor non-trivial (timm starts biases
    and LayerNorms at 0 and 1, pretrained weights do not), so an update that forgets one of them shows."""
    with torch.random.fork_rng(devices=[]), random_weights_expected():
        torch.manual_seed(SEED)
        model = create_backbone(TINY_VIT, NUM_CLASSES).eval()
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.1 * torch.randn_like(param))
    return model


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 3, TINY_VIT.img_size, TINY_VIT.img_size, generator=torch.Generator().manual_seed(seed))


def largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def moved(model: nn.Module) -> nn.Module:
    """``model`` with every trainable tensor moved off its initial value, as training would move it."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


def check_trainable(name: str, hparams: dict) -> None:
    """Exactly the declared tensors (name prefix, and the head) train, and each of them gets a gradient."""
    spec = ADAPTERS[name]
    model = tiny_backbone()
    own = {id(param) for param in model.parameters()}
    apply_adapter(model, name, **hparams).train()
    added = [n for n, p in model.named_parameters() if id(p) not in own and not p.requires_grad]
    if added:
        raise ContractError(
            f"{name}: trains what it declares: {added[0]} is a parameter the adapter adds, frozen (its name lacks the "
            f"prefix {spec.prefix!r}); name it with the prefix, or make it a buffer if it must not train"
        )
    model(images()).square().mean().backward()
    for param_name, param in model.named_parameters():
        parts = param_name.split(".")
        declared = parts[0] == "head" or spec.prefix == "*" or any(p.startswith(spec.prefix or "\0") for p in parts)
        if param.requires_grad != declared:
            state = "trains" if param.requires_grad else "is frozen"
            raise ContractError(f"{name}: trains what it declares: {param_name} {state} (prefix {spec.prefix!r})")
        if declared and param.grad is None:
            raise ContractError(f"{name}: trains what it declares: {param_name} gets no gradient")
    if spec.prefix is not None and not adapter_parameters(model):
        raise ContractError(
            f"{name}: trains what it declares: no parameter outside the head has prefix {spec.prefix!r}"
        )
    for module_name, module in model.named_modules():
        if isinstance(module, AdaptedLayer) and any(p.requires_grad for p in module.base_layer.parameters()):
            if spec.prefix != "*":
                raise ContractError(f"{name}: the wrapped layer stays frozen: {module_name}.base_layer trains")


def check_identity_at_init(name: str, hparams: dict) -> None:
    """Under each convention it declares, the adapted model computes what the backbone does."""
    bare = tiny_backbone()
    with torch.no_grad():
        expected = bare(images())
        for convention in ADAPTERS[name].identity_at_init:
            model = apply_adapter(tiny_backbone(), name, **{**hparams, "convention": convention}).eval()
            with sample_latents(model, "mean"):
                gap = largest_difference(model(images()), expected)
            if gap > TOLERANCE:
                raise ContractError(f"{name}: identity at init (convention={convention}): outputs differ by {gap:.2e}")


def check_merge(name: str, hparams: dict) -> None:
    """A mergeable adapter folds into the backbone (same outputs, no adapter layer left); others refuse to."""
    model = moved(apply_adapter(tiny_backbone(), name, **hparams)).eval()
    if not ADAPTERS[name].mergeable:
        try:
            merge_adapter(model)
        except ValueError:
            return
        raise ContractError(f"{name}: not mergeable: merge_adapter did not refuse")
    with torch.no_grad(), sample_latents(model, "mean"):
        unmerged = model(images())
        try:
            merge_adapter(model)
        except (NotImplementedError, ValueError) as error:
            raise ContractError(f"{name}: mergeable: merge_adapter fails: {error}") from error
        gap = largest_difference(model(images()), unmerged)
    if gap > TOLERANCE:
        raise ContractError(f"{name}: merged equals unmerged: outputs differ by {gap:.2e}")
    left = [n for n, m in model.named_modules() if isinstance(m, AdaptedLayer)]
    if left:
        raise ContractError(f"{name}: merged costs the bare backbone: {left[0]} is still an adapter layer")


def check_sampling(name: str, hparams: dict) -> None:
    """A stochastic adapter samples in training, has a regularisation term, and honours the test-time latent;
    a deterministic one does neither."""
    model = moved(apply_adapter(tiny_backbone(), name, **hparams))
    x = images()
    with torch.no_grad():
        first, second = model.train()(x), model(x)
        loss = adapter_loss(model)
        model.eval()
        means = [model(x) for _ in range(2)]
        with sample_latents(model, "random"):
            draws = [model(x) for _ in range(2)]
    if not ADAPTERS[name].stochastic:
        if loss is not None:
            raise ContractError(f"{name}: deterministic: adapter_loss is not None")
        if largest_difference(*means) > 0:
            raise ContractError(f"{name}: deterministic: two eval forwards differ")
        return
    if largest_difference(first, second) == 0:
        raise ContractError(f"{name}: stochastic: two training forwards are equal (nothing is sampled)")
    if loss is None or not torch.isfinite(loss):
        raise ContractError(f"{name}: stochastic: adapter_loss after a training forward is {loss}")
    if largest_difference(*means) > 0:
        raise ContractError(f"{name}: sampling=mean is deterministic: two eval forwards differ")
    if largest_difference(*draws) == 0:
        raise ContractError(f"{name}: sampling=random samples: two eval forwards under sample_latents('random') agree")


def check_adapter_file(name: str, hparams: dict) -> None:
    """What training changed survives the adapter file: a model rebuilt from it predicts the same."""
    if ADAPTERS[name].prefix == "*":
        return  # full fine-tuning saves no adapter file
    model = moved(apply_adapter(tiny_backbone(), name, **hparams)).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.adapter.safetensors"
        save_adapter(copy_model(model), path, {"backbone": asdict(TINY_VIT), "num_classes": NUM_CLASSES, "seed": SEED})
        rebuilt = load_adapter(tiny_backbone(), path)  # also checks that the frozen backbone is the same
    with torch.no_grad(), sample_latents(model, "mean"), sample_latents(rebuilt, "mean"):
        gap = largest_difference(rebuilt(images()), model(images()))
    if gap > TOLERANCE:
        raise ContractError(f"{name}: state round-trips through the adapter file: outputs differ by {gap:.2e}")


CHECKS: tuple[Callable[[str, dict], None], ...] = (
    check_trainable,
    check_identity_at_init,
    check_merge,
    check_sampling,
    check_adapter_file,
)


def check_adapter(name: str, **hparams) -> list[str]:
    """Run every check of the contract on registered adapter ``name`` (with ``hparams``); returns the names of the
    checks passed, or raises :class:`ContractError` at the first broken promise."""
    if name not in ADAPTERS:
        raise ContractError(f"{name}: not registered (registered: {', '.join(sorted(ADAPTERS))})")
    for check in CHECKS:
        check(name, hparams)
    return [check.__name__ for check in CHECKS]
