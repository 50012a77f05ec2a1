"""Parameter-efficient adapters for timm VisionTransformers, registered by name.

    >>> import timm
    >>> from pvera_bench.adapters import apply_adapter, merge_adapter
    >>> model = timm.create_model("vit_base_patch16_224", num_classes=10)
    >>> apply_adapter(model, "pvera", r=256)       # in place; returns the model
    >>> merge_adapter(model.eval())                 # fold the update into the weights

The contract: :mod:`~pvera_bench.adapters.registry` (the registry and the config a model carries),
:mod:`~pvera_bench.adapters.layers` (the :class:`AdaptedLayer` every wrapper is, targets, q/v slices),
:mod:`~pvera_bench.adapters.sampling` (KL term, test-time latent, MC dropout), :mod:`~pvera_bench.adapters.api`
(apply, merge, what trains). Each other module is one adapter, imported below so that it registers; adapters of
other packages register through their entry points (:mod:`pvera_bench.core.plugins`, docs/own_adapter.md).
"""

from pvera_bench.adapters import (  # noqa: F401  (each module registers its adapter)
    adapter_plus,
    adaptformer,
    bitfit,
    bottleneck,
    convpass,
    dora,
    fact,
    full,
    ia3,
    linear,
    ln_tuning,
    lora,
    pvera,
    repadapter,
    ssf,
    vera,
    vpt,
)
from pvera_bench.adapters.api import (
    adapter_parameters,
    adapter_spec,
    apply_adapter,
    head_parameters,
    is_mergeable,
    is_stochastic,
    mark_trainable,
    merge_adapter,
    samples_at_test,
    trainable_split,
)
from pvera_bench.adapters.layers import AdaptedLayer
from pvera_bench.adapters.registry import (
    ADAPTERS,
    AdapterSpec,
    adapter_config,
    applied_adapter,
    copy_model,
    load_adapter_plugins,
    register_adapter,
)
from pvera_bench.adapters.sampling import SAMPLE_MODES, StochasticLayer, adapter_loss, mc_dropout, sample_latents
from pvera_bench.config import AdapterConfig

load_adapter_plugins()  # the adapters other installed packages declare (pvera_bench.core.plugins)

__all__ = [
    "ADAPTERS",
    "SAMPLE_MODES",
    "AdaptedLayer",
    "AdapterConfig",
    "AdapterSpec",
    "StochasticLayer",
    "adapter_config",
    "adapter_loss",
    "adapter_parameters",
    "adapter_spec",
    "applied_adapter",
    "apply_adapter",
    "copy_model",
    "head_parameters",
    "is_mergeable",
    "is_stochastic",
    "mark_trainable",
    "mc_dropout",
    "merge_adapter",
    "register_adapter",
    "sample_latents",
    "samples_at_test",
    "trainable_split",
]
