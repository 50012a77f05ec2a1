"""``python -m pvera_bench.table``: the same as ``pvera-bench table``."""

from pvera_bench.cli import run_as_module

run_as_module(__name__, "table")
