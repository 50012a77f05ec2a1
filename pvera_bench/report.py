"""``python -m pvera_bench.report``: the same as ``pvera-bench report``."""

from pvera_bench.cli import run_as_module

run_as_module(__name__, "report")
