"""VTAB-1k tasks on disk: the shared folder layout, decoded once into uint8 tensors."""

from pvera_bench.data.vtab import SPLITS, SplitData, load_split, locate_task

__all__ = ["SPLITS", "SplitData", "load_split", "locate_task"]
