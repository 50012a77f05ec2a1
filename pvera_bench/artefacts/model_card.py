"""The README of an exported PEFT adapter: where it comes from and how to build the model it adapts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm


def hub_model_id(backbone: dict[str, Any]) -> str | None:
    """The hub id of a pretrained timm backbone (None: random-init or local weights)."""
    if not backbone.get("pretrained") or backbone.get("weights"):
        return None
    cfg = timm.models.get_pretrained_cfg(backbone["name"])
    return getattr(cfg, "hf_hub_id", None) or f"timm/{backbone['name']}"


def model_card(info: dict[str, Any], path: Path, config: Any) -> str:
    """A short README: where the adapter comes from and how to build the model it adapts."""
    backbone, adapter = info["backbone"], info["adapter"]
    hub_id, weights = hub_model_id(backbone), backbone.get("weights")
    kwargs = {"num_classes": info["num_classes"], **backbone.get("model_kwargs", {})}
    if backbone.get("img_size") is not None:
        kwargs["img_size"] = backbone["img_size"]
    arguments = "".join(f", {key}={value!r}" for key, value in kwargs.items())
    create = f"backbone = timm.create_model({backbone['name']!r}, pretrained={hub_id is not None}{arguments})"
    if hub_id is not None:
        origin = f"pretrained weights `{hub_id}`"
    elif weights:
        origin = f"the local weights file `{weights}` (pass it as timm's `pretrained_cfg_overlay=dict(file=...)`)"
    else:
        origin = f"random initialisation from the run seed {info['seed']}"
        create = f"torch.manual_seed({info['seed']})  # recreates the run's random backbone\n{create}"
    task = f" on {info['dataset']}" if info.get("dataset") else ""
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    targets = ", ".join(f"`{t}`" for t in sorted(config.target_modules))
    front = f"---\n{f'base_model: {hub_id}' + chr(10) if hub_id else ''}library_name: peft\n---\n\n"
    return f"""{front}# {adapter["name"]} adapter for timm `{backbone["name"]}`{task}

Exported by pvera_bench from `{path.name}` as a PEFT {peft_type} adapter (run seed {info["seed"]},
`adapter.convention={adapter["convention"]}`; backbone: {origin}). It targets {targets} of a timm ViT whose fused
`attn.qkv` Linears are split into `q`, `k`, `v` by `pvera_bench.models.peft_compat.split_qkv`; the trained
classification head is saved as `head`.

```python
import timm
import torch
from peft import PeftModel
from pvera_bench.models.peft_compat import split_qkv

{create}
model = PeftModel.from_pretrained(split_qkv(backbone), "<this folder or repo>").eval()
```

The adapter's configuration in pvera_bench: `{json.dumps(adapter)}`.
"""
