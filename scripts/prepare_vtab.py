#!/usr/bin/env python
"""``python scripts/prepare_vtab.py <task>... | all [--root DIR] [--mock]``: the same as ``pvera-bench prepare``."""

import sys

from pvera_bench.cli import main

main(["prepare", *sys.argv[1:]])
