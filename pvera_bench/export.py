"""``python -m pvera_bench.export``: the same as ``pvera-bench export``."""

from pvera_bench.cli import run_as_module

run_as_module(__name__, "export")
