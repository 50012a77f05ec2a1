"""The grid options: each composes, names registered adapters and their config fields, and every point it gives
is a valid adapter; grid=methods keeps grid=pvera's entries and gives every method with hyperparameters a grid."""

from __future__ import annotations

from dataclasses import fields

import pytest
from helpers import compose_config

from pvera_bench.adapters import ADAPTERS
from pvera_bench.config import CONF_DIR
from pvera_bench.config.grid import grid_points
from pvera_bench.pipeline.validate import validate

GRIDS = sorted(p.stem for p in (CONF_DIR / "grid").glob("*.yaml"))
ONE_CONFIGURATION = {"linear", "full", "ia3"}  # no grid in either option: they train one configuration


def grid_of(option: str) -> dict:
    return compose_config(f"grid={option}").grid


def test_the_grid_options_are_the_known_ones():
    assert GRIDS == ["methods", "none", "pvera"]


@pytest.mark.parametrize("option", GRIDS)
def test_every_grid_key_is_a_field_of_its_adapters_config(option):
    for adapter, space in grid_of(option).items():
        assert adapter in ADAPTERS, f"grid={option}: {adapter} is not a registered adapter"
        names = {f.name for f in fields(ADAPTERS[adapter].config_cls)}
        for key, values in space.items():
            section, _, name = key.partition(".")
            assert section == "adapter" and name in names, f"grid={option}: {adapter} has no config field {key}"
            assert len(values) >= 1, f"grid={option}: {adapter}.{key} has no values"


@pytest.mark.parametrize("option", GRIDS)
def test_every_point_of_every_grid_is_a_valid_adapter(option):
    for adapter, space in grid_of(option).items():
        cfg = compose_config(f"adapter={adapter}", f"grid={option}")
        points = grid_points(validate(cfg))  # validate checks every point's adapter config
        assert len(points) == len(grid_points(cfg)) >= 1
        assert {key for point in points for key in point} == set(space)


def test_the_methods_grid_keeps_the_pvera_grid_and_covers_every_tuned_method():
    pvera, methods = grid_of("pvera"), grid_of("methods")
    assert {name: methods[name] for name in pvera} == dict(pvera)
    assert set(methods) == set(ADAPTERS) - ONE_CONFIGURATION
    assert not grid_of("none")
