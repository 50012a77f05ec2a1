"""How each VTAB-1k task turns a TFDS example into (image, label), as google-research/task_adaptation does.

Every function takes one example of ``tfds.data_source`` (a dict of numpy values) and returns
an ``(H, W, C)`` uint8 image and an int label.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Example = dict[str, Any]
Extract = Callable[[Example], tuple[np.ndarray, int]]

CLEVR_DISTANCE_THRESHOLDS = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
KITTI_DISTANCE_THRESHOLDS = np.array([-100.0, 8.0, 20.0, 999.0])
KITTI_VEHICLE_TYPES = 3  # Car, Van, Truck are types 0, 1, 2
KITTI_NO_VEHICLE_DISTANCE = 1000.0
DSPRITES_VALUES = {"label_x_position": 32, "label_orientation": 40}
DSPRITES_CLASSES = 16


def bin_index(thresholds: np.ndarray, value: float) -> int:
    """The largest i with ``thresholds[i] < value`` (task_adaptation's ``reduce_max(where(thrs - v < 0))``)."""
    below = np.flatnonzero(thresholds < value)
    if below.size == 0:
        raise ValueError(f"value {value} is not above the first threshold {thresholds[0]}")
    return int(below.max())


def plain(example: Example) -> tuple[np.ndarray, int]:
    return example["image"], int(example["label"])


def clevr_count(example: Example) -> tuple[np.ndarray, int]:
    """Number of objects minus 3 (scenes hold 3 to 10 objects: 8 classes)."""
    return example["image"], len(example["objects"]["size"]) - 3


def clevr_distance(example: Example) -> tuple[np.ndarray, int]:
    """Depth of the closest object, binned at 0, 8, 8.5, 9, 9.5, 10, 100 (6 classes)."""
    depth = float(np.min(example["objects"]["pixel_coords"][:, 2]))
    return example["image"], bin_index(CLEVR_DISTANCE_THRESHOLDS, depth)


def kitti_closest_vehicle_distance(example: Example) -> tuple[np.ndarray, int]:
    """Depth of the closest car, van or truck, binned at -100, 8, 20, 999; no vehicle is class 3."""
    objects = example["objects"]
    depths = np.asarray(objects["location"], dtype=np.float64).reshape(-1, 3)[:, 2]
    types = np.asarray(objects["type"])
    count = min(len(depths), len(types))  # equal in real data; mock data draws each field's length on its own
    vehicle_depths = depths[:count][types[:count] < KITTI_VEHICLE_TYPES]
    distance = float(np.min(np.append(vehicle_depths, KITTI_NO_VEHICLE_DISTANCE)))
    return example["image"], bin_index(KITTI_DISTANCE_THRESHOLDS, distance)


def dsprites(attribute: str) -> Extract:
    """Binary 64x64 sprite scaled to 0/255 and tiled to RGB; the attribute's values grouped into 16 bins."""
    factor = DSPRITES_VALUES[attribute] / DSPRITES_CLASSES

    def extract(example: Example) -> tuple[np.ndarray, int]:
        image = np.repeat(np.asarray(example["image"], dtype=np.uint8) * 255, 3, axis=-1)
        return image, int(np.floor(float(example[attribute]) / factor))

    return extract


def smallnorb(attribute: str) -> Extract:
    """The first (left) camera image, grey tiled to RGB; the attribute's label as is."""

    def extract(example: Example) -> tuple[np.ndarray, int]:
        return np.repeat(example["image"], 3, axis=-1), int(example[attribute])

    return extract


EXTRACTORS: dict[str, Extract] = {
    "plain": plain,
    "clevr_count": clevr_count,
    "clevr_distance": clevr_distance,
    "kitti_closest_vehicle_distance": kitti_closest_vehicle_distance,
    "dsprites_x_position": dsprites("label_x_position"),
    "dsprites_orientation": dsprites("label_orientation"),
    "smallnorb_azimuth": smallnorb("label_azimuth"),
    "smallnorb_elevation": smallnorb("label_elevation"),
}
