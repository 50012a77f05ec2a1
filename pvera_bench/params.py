"""``python -m pvera_bench.params``: the same as ``pvera-bench params``."""

from pvera_bench.cli import run_as_module

run_as_module(__name__, "params")
