"""A task's splits as a run's stages see them: images on the device, or, for a linear probe, backbone features.

When only the head trains (``trainer.cache_features`` and an adapter without parameters of its
own), the frozen backbone's pre-logits features are computed once per split and the head is
trained and evaluated on them: the same numbers as the image path, at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import torch
from torch import nn

from pvera_bench.adapters import adapter_parameters
from pvera_bench.data import SplitData
from pvera_bench.models.runtime import Runtime, autocast, batches, place_split


class HeadOnly(nn.Module):
    """The classification head alone, trained on cached backbone features (its parameters stay ``head.*``)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


@torch.no_grad()
def backbone_features(model: nn.Module, data: SplitData, runtime: Runtime, batch_size: int) -> SplitData:
    """The pre-logits features of a frozen timm model for every image of a split (float32)."""
    model.eval()
    features = []
    for images, _ in batches(data, batch_size, runtime.device):
        with autocast(runtime.device, runtime.bf16):
            features.append(
                model.forward_head(model.forward_features(runtime.normalize(images)), pre_logits=True).float()
            )
    return SplitData(torch.cat(features), data.labels)


class TaskInputs:
    """Each split of a task loaded once and placed on the device, and its backbone features once computed.

    Args:
        loaders: by split name, what reads the split (uint8 images and labels): the task's own splits, and
            the OOD sets (``ood-<task>``).
        runtime: the device, normalisation and precision of the image path.
        eval_batch_size: batch size of the feature pass.
        cache_features: whether a model that trains only its head runs on cached features.
    """

    def __init__(
        self,
        loaders: Mapping[str, Callable[[], SplitData]],
        runtime: Runtime,
        eval_batch_size: int,
        cache_features: bool,
    ) -> None:
        self.loaders = loaders
        self.runtime = runtime
        self.eval_batch_size = eval_batch_size
        self.cache_features = cache_features
        self.images: dict[str, SplitData] = {}
        self.features: dict[str, SplitData] = {}

    def split(self, name: str) -> SplitData:
        """The images and labels of a split, on the device."""
        if name not in self.images:
            self.images[name] = place_split(self.loaders[name](), self.runtime.device)
        return self.images[name]

    def uses_features(self, model: nn.Module) -> bool:
        """Whether only the head of ``model`` trains, so that the frozen backbone's features can be computed once."""
        return self.cache_features and not adapter_parameters(model)

    def for_model(self, model: nn.Module, name: str) -> tuple[nn.Module, SplitData, Runtime]:
        """What to train or evaluate ``model`` with on a split: the model on images, or its head on features."""
        if not self.uses_features(model):
            return model, self.split(name), self.runtime
        if name not in self.features:
            self.features[name] = backbone_features(model, self.split(name), self.runtime, self.eval_batch_size)
        return HeadOnly(model.head), self.features[name], replace(self.runtime, normalize=nn.Identity())
