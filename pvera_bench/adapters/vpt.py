"""VPT (Jia et al., ECCV 2022, "Visual Prompt Tuning"): learnable prompt tokens in the token sequence of a frozen ViT.

Registered twice: ``vpt_shallow`` and ``vpt_deep``. With ``E_0`` the embedded patches (after the position
embedding), ``x`` the prefix tokens (cls, and register tokens if any) and ``L_i`` the i-th frozen block:

- shallow: ``[x_1, Z_1, E_1] = L_1([x_0, P, E_0])``, then ``[x_i, Z_i, E_i] = L_i([x_{i-1}, Z_{i-1}, E_{i-1}])``;
- deep: ``[x_i, _, E_i] = L_i([x_{i-1}, P_{i-1}, E_{i-1}])`` for every block: block i replaces the prompt
  positions' outputs of block i-1 with its own prompts ``P_{i-1}``.

Prompts get no position embedding and sit between the prefix tokens and the patches. Each block of
``model.blocks`` is wrapped in a :class:`PromptedBlock`; the last one drops the prompt tokens from its output, so
timm's final norm and pooling (cls token, or the mean over patches) see the bare model's token layout.

Official implementation followed: KMnP/vpt ``src/models/vit_prompt/vit.py`` (``PromptedTransformer``:
``incorporate_prompt`` inserts the prompts after the cls token, ``forward_deep_prompt`` replaces them before
each block after the first), defaults in ``src/configs/config.py`` (``MODEL.PROMPT``).

Initialisation (official, ``vit.py`` l. 57-70): every prompt uniform in ``±sqrt(6 / (3 · patch_h · patch_w + dim))``,
the Xavier-uniform bound of the patch projection (3 RGB channels), from torch's global RNG. One tensor per block
(``blocks.i.vpt_prompts``, ``(prompts, dim)``): the official ``prompt_embeddings`` is block 0's, its
``deep_prompt_embeddings[i - 1]`` is block i's. The model is not the backbone at init and nothing folds away.

Choices and differences:

- prompt dropout is drawn independently for every image (the official code drops out the prompts after
  expanding them over the batch); its default is 0.1 for ``vpt_deep`` and 0 for ``vpt_shallow``, as the paper's
  VTAB-1k runs (KMnP/vpt ``demo.ipynb``: "MODEL.PROMPT.DROPOUT 0.1" for deep, "we don't use dropout for
  VPT-shallow"); ``config.py`` itself defaults to 0.0;
- the official code has one prefix token (cls); here the prompts follow all ``model.num_prefix_tokens``
  (DINOv2's register tokens too);
- the official code keeps the prompt tokens through the final norm and takes the cls token (its default pool);
  dropping them after the last block gives the same cls feature (the norm is per token), and a mean-pooling
  backbone averages over the patches only (the official ablation ``img_pool``);
- the official ``PromptedTransformer.train`` keeps the backbone in eval mode while training (its dropout off);
  timm's ViTs used here have no dropout, so that makes no difference unless a backbone config turns it on;
- the official code can project prompts (``PROJECT``), share or limit deep prompts: their defaults (off) only;
- ``convention`` changes nothing: PEFT has no VPT, and the paper's equations are the official code's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pvera_bench.adapters.layers import AdaptedLayer, check_dropout, dropout_layer
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import AdapterConfig

DEEP_DROPOUT = 0.1  # the paper's VTAB-1k runs of VPT-deep (KMnP/vpt demo.ipynb); VPT-shallow uses none


@dataclass
class VptConfig(AdapterConfig):
    """Args:
    prompts: prompt tokens per block (deep) or at the input (shallow), the paper's p; 5 as the official
        ``MODEL.PROMPT.NUM_TOKENS``.
    dropout: dropout on the prompt tokens; None: 0.1 for ``vpt_deep``, 0 for ``vpt_shallow``.
    """

    prompts: int = 5
    dropout: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dropout is None:
            self.dropout = DEEP_DROPOUT if self.name == "vpt_deep" else 0.0
        if self.prompts < 1:
            raise ValueError(f"adapter.prompts must be >= 1, got {self.prompts}")
        check_dropout(self.dropout)


class PromptedBlock(AdaptedLayer):
    """A frozen block that writes its prompts (if it has any) after the prefix tokens before running, and, as the
    last block, drops the prompt tokens from its output.

    Args:
        prompts: this block's prompt tokens ``(n, dim)``; None: the block passes on the prompts it receives.
        replaces: the input already holds ``n`` prompt tokens after the prefix, which ``prompts`` replace (deep).
        removes: drop the ``n`` prompt tokens from the output (the last block).
    """

    def __init__(
        self,
        base_layer: nn.Module,
        prompts: torch.Tensor | None,
        num_prompts: int,
        num_prefix: int,
        dropout: float,
        replaces: bool,
        removes: bool,
    ) -> None:
        super().__init__(base_layer)
        self.vpt_prompts = None if prompts is None else nn.Parameter(prompts)
        self.prompt_dropout = dropout_layer(dropout if prompts is not None else 0.0)
        self.num_prompts = num_prompts
        self.num_prefix = num_prefix
        self.replaces = replaces
        self.removes = removes

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        """The tokens with this block's prompts written after the prefix (``x`` itself if it has none)."""
        if self.vpt_prompts is None:
            return x
        prefix, rest = x[:, : self.num_prefix], x[:, self.num_prefix :]
        if self.replaces:
            rest = rest[:, self.num_prompts :]  # the previous block's prompt outputs are discarded
        prompts = self.prompt_dropout(self.vpt_prompts.to(x.dtype).expand(x.shape[0], -1, -1))
        return torch.cat([prefix, prompts, rest], dim=1)

    def adapt_output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The block's output, without the prompt tokens when it is the last block."""
        if not self.removes:
            return out
        return torch.cat([out[:, : self.num_prefix], out[:, self.num_prefix + self.num_prompts :]], dim=1)


def initial_prompts(model: nn.Module, count: int) -> torch.Tensor:
    """``(count, dim)`` prompts, uniform in the official Xavier bound."""
    patch_h, patch_w = model.patch_embed.patch_size
    bound = math.sqrt(6.0 / (3 * patch_h * patch_w + model.embed_dim))
    return torch.empty(count, model.embed_dim).uniform_(-bound, bound)


def inject(model: nn.Module, config: VptConfig, deep: bool) -> None:
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "num_prefix_tokens"):
        raise TypeError(
            f"{type(model).__name__} is not a timm VisionTransformer (it needs .blocks, .num_prefix_tokens)"
        )
    last = len(blocks) - 1
    for index, block in enumerate(blocks):
        has_prompts = index == 0 or deep
        blocks[index] = PromptedBlock(
            block,
            initial_prompts(model, config.prompts) if has_prompts else None,
            num_prompts=config.prompts,
            num_prefix=model.num_prefix_tokens,
            dropout=config.dropout,
            replaces=has_prompts and index > 0,
            removes=index == last,
        )


def inject_shallow(model: nn.Module, config: VptConfig) -> None:
    inject(model, config, deep=False)


def inject_deep(model: nn.Module, config: VptConfig) -> None:
    inject(model, config, deep=True)


register_adapter("vpt_shallow", VptConfig, inject_shallow, prefix="vpt_", identity_at_init=())
register_adapter("vpt_deep", VptConfig, inject_deep, prefix="vpt_", identity_at_init=())
