"""pvera_bench: parameter-efficient adapters (PVeRA, VeRA, LoRA, ...) on frozen timm ViTs, benchmarked on VTAB-1k.

The library face, for people who only want the adapters::

    import timm
    import pvera_bench

    model = timm.create_model("vit_base_patch16_224.orig_in21k", pretrained=True, num_classes=100)
    pvera_bench.apply_adapter(model, "pvera", r=256)     # in place: all but the adapter and the head frozen
    loss = criterion(model(x), y) + pvera_bench.adapter_loss(model) / beta
    with pvera_bench.sample_latents(model.eval(), "fixed"):
        logits = model(x)
    pvera_bench.merge_adapter(model)                      # fold the update into the weights

The harness is the ``pvera-bench`` command (``pvera-bench --help``). The package's layers, lowest first:
``core`` · ``config`` · ``adapters`` | ``data`` · ``models`` · ``evaluation`` · ``training`` · ``artefacts`` ·
``pipeline`` | ``reporting`` · ``cli`` (docs/internals.md).
"""

from importlib import import_module, metadata

# The public names, imported on first use (PEP 562), so that ``pvera-bench --help`` does not load torch.
PUBLIC = {
    "ADAPTERS": "pvera_bench.adapters",
    "adapter_loss": "pvera_bench.adapters",
    "apply_adapter": "pvera_bench.adapters",
    "merge_adapter": "pvera_bench.adapters",
    "register_adapter": "pvera_bench.adapters",
    "sample_latents": "pvera_bench.adapters",
    "build_from_artefact": "pvera_bench.artefacts.adapter_file",
    "load_adapter": "pvera_bench.artefacts.adapter_file",
}

try:
    __version__ = metadata.version("pvera-bench")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", *PUBLIC]


def __getattr__(name: str):
    if name in PUBLIC:
        return getattr(import_module(PUBLIC[name]), name)
    raise AttributeError(f"module 'pvera_bench' has no attribute {name!r}")
