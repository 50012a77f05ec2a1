"""``python -m pvera_bench [overrides]``: the same as ``pvera-bench run [overrides]``."""

from pvera_bench.cli import run_as_module

run_as_module(__name__, "run")
