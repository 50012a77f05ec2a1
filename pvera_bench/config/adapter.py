"""The fields every adapter's config has; each adapter's own schema extends :class:`AdapterConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Convention(StrEnum):
    """How an adapter is initialised, scaled and structured; each adapter's docstring says what differs.

    ``official``: as the official PVeRA code (leofillioux/pvera) builds it, its bugs left out (those are
    ``quirks``); ``peft``: as Hugging Face PEFT builds it (the adapter's paper where PEFT has none).
    """

    official = "official"
    peft = "peft"


@dataclass
class AdapterConfig:
    """Fields every adapter has.

    Args:
        name: registry name of the adapter.
        lr: learning rate of the adapter's parameters; None uses ``trainer.lr``.
        convention: ``official`` (the official PVeRA code's initialisation and scales) or ``peft``.
    """

    name: str = ""
    lr: float | None = None
    convention: Convention = Convention.official

    def __post_init__(self) -> None:
        self.convention = Convention(self.convention)
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"adapter.lr must be positive, got {self.lr}")
