"""task_adaptation's label functions, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from pvera_bench.data.labels import EXTRACTORS

IMAGE = np.zeros((4, 4, 3), dtype=np.uint8)


def label_of(extract: str, **example) -> int:
    return EXTRACTORS[extract]({"image": IMAGE, **example})[1]


@pytest.mark.parametrize("objects, expected", [(3, 0), (4, 1), (10, 7)])
def test_clevr_count_is_objects_minus_three(objects, expected):
    assert label_of("clevr_count", objects={"size": np.zeros(objects)}) == expected


@pytest.mark.parametrize(
    "depths, expected",
    [([9.2, 12.0], 3), ([7.9], 0), ([8.0], 0), ([8.01], 1), ([8.7, 30.0], 2), ([9.5], 3), ([9.6], 4), ([10.5], 5)],
)
def test_clevr_distance_bins_the_closest_depth(depths, expected):
    coords = np.array([[0.0, 0.0, d] for d in depths])
    assert label_of("clevr_distance", objects={"pixel_coords": coords}) == expected


@pytest.mark.parametrize(
    "types, depths, expected",
    [
        ([0, 3], [25.0, 5.0], 2),  # the pedestrian (type 3) is closer but is not a vehicle
        ([1], [5.0], 0),  # van
        ([2], [8.0], 0),  # truck exactly at a threshold stays in the lower bin
        ([0], [8.1], 1),
        ([0, 0], [19.0, 30.0], 1),
        ([0], [20.5], 2),
        ([3, 4, 7], [4.0, 6.0, 9.0], 3),  # no car, van or truck: "no vehicle"
        ([], [], 3),
    ],
)
def test_kitti_closest_vehicle_distance(types, depths, expected):
    location = np.array([[0.0, 1.0, d] for d in depths]).reshape(-1, 3)
    objects = {"type": np.array(types, dtype=np.int64), "location": location}
    assert label_of("kitti_closest_vehicle_distance", objects=objects) == expected


@pytest.mark.parametrize("value, expected", [(0, 0), (1, 0), (2, 1), (17, 8), (31, 15)])
def test_dsprites_x_position_groups_32_values_into_16(value, expected):
    assert label_of("dsprites_x_position", label_x_position=value) == expected


@pytest.mark.parametrize("value, expected", [(0, 0), (2, 0), (3, 1), (4, 1), (5, 2), (39, 15)])
def test_dsprites_orientation_groups_40_values_into_16(value, expected):
    assert label_of("dsprites_orientation", label_orientation=value) == expected


def test_dsprites_image_becomes_0_255_rgb():
    sprite = np.zeros((64, 64, 1), dtype=np.uint8)
    sprite[10:20, 10:20] = 1
    image, _ = EXTRACTORS["dsprites_x_position"]({"image": sprite, "label_x_position": 0})
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert set(np.unique(image)) == {0, 255} and image[15, 15].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "extract, key", [("smallnorb_azimuth", "label_azimuth"), ("smallnorb_elevation", "label_elevation")]
)
def test_smallnorb_keeps_the_label_and_tiles_grey(extract, key):
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    image, label = EXTRACTORS[extract]({"image": grey, key: 7, "label_azimuth": 7, "label_elevation": 7})
    assert label == 7 and image.shape == (4, 4, 3) and (image[..., 2] == grey[..., 0]).all()


def test_plain_passes_image_and_label():
    image, label = EXTRACTORS["plain"]({"image": IMAGE, "label": np.int64(5)})
    assert label == 5 and image is IMAGE
