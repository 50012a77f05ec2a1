"""The one exception type that means "the user must change something", reported in one line."""

from __future__ import annotations

from omegaconf.errors import OmegaConfBaseException


class UserError(Exception):
    """Bad input (config, data, weights): the message says what is wrong and how to fix it."""


def one_line(error: BaseException) -> str:
    """The error and its config cause, with Hydra's multi-line layout folded into one line."""
    parts = [str(error)]
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause) not in parts[0]:
        parts.append(str(cause))
    text = " ".join(": ".join(parts).split())
    for noise in (" Config search path:", " full_key:"):  # Hydra's and OmegaConf's debugging context
        text = text.split(noise)[0]
    return text.replace(" Available options in", "; available options in")
