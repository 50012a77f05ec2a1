"""What other installed packages add to pvera_bench, declared as entry points in their ``pyproject.toml``::

    [project.entry-points."pvera_bench.adapters"]
    my_adapter = "my_package.my_adapter"    # a module that calls register_adapter("my_adapter", ...)

    [project.entry-points."pvera_bench.conf"]
    my_package = "my_package.conf"          # a package holding config groups: adapter/my_adapter.yaml, grid/...

The adapter modules are imported by :mod:`pvera_bench.adapters`; the config packages join Hydra's config search
path (``hydra.searchpath`` in ``conf/config.yaml``), after pvera_bench's own ``conf/``.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from importlib.metadata import EntryPoint, EntryPoints, entry_points

from pvera_bench.core.errors import UserError

ADAPTER_GROUP = "pvera_bench.adapters"
CONF_GROUP = "pvera_bench.conf"


@cache
def installed_entry_points() -> EntryPoints:
    """The entry points of pvera_bench's groups that installed distributions declare, read once per process (a read
    scans the metadata of every installed distribution)."""
    installed = entry_points()
    return EntryPoints(entry for group in (ADAPTER_GROUP, CONF_GROUP) for entry in installed.select(group=group))


def declared(group: str) -> list[EntryPoint]:
    """The entry points of ``group`` that installed distributions declare, by name."""
    return sorted(installed_entry_points().select(group=group), key=lambda entry: entry.name)


def origin(entry: EntryPoint) -> str:
    """Where an entry point comes from, for error messages."""
    distribution = f" of {entry.dist.name} {entry.dist.version}" if entry.dist is not None else ""
    return f"entry point {entry.name} = {entry.value!r} in group {entry.group}{distribution}"


def config_search_path() -> list[str]:
    """Hydra search-path entries (``pkg://<package>``) of the config packages that plugins declare."""
    paths = []
    for entry in declared(CONF_GROUP):
        try:
            found = importlib.util.find_spec(entry.value) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UserError(f"{origin(entry)}: no importable package {entry.value!r}; fix the entry point or reinstall")
        paths.append(f"pkg://{entry.value}")
    return paths
