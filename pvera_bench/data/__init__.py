"""VTAB-1k tasks on disk: the shared folder layout, checked before training and decoded once into uint8 tensors."""

from pvera_bench.data.vtab import SPLITS, SplitData, check_split, load_split, locate_task

__all__ = ["SPLITS", "SplitData", "check_split", "load_split", "locate_task"]
