"""Command-line plumbing shared by the entry points: bad input ends in one line, exit status 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from pvera_bench.core.errors import UserError, one_line

USAGE_ERRORS = (UserError, HydraException, OmegaConfBaseException)


def exit_with(error: BaseException) -> None:
    print(f"error: {one_line(error)}", file=sys.stderr)
    sys.exit(2)


def run_cli(main: Callable[[], object]) -> None:
    """Call ``main`` and turn usage errors into ``error: <one line>`` on stderr and exit status 2.

    Hydra is told to raise instead of printing (HYDRA_FULL_ERROR); a user who sets that
    variable keeps the full traceback.
    """
    user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except USAGE_ERRORS as error:
        if user_wants_traceback:
            raise
        exit_with(error)
