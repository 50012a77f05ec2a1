"""What the grid search chose, per task and seed: ``hyperparameters.csv`` and ``validation_curves.csv``.

Written by ``make table`` beside the tables, from the ``grid`` of every successful result: one row per
run and grid point (its values, val loss / NLL / top-1 at its kept epoch, the epoch kept, the epochs run,
whether it was chosen, and for the chosen one the epoch whose weights were tested), and one row per run,
grid point and epoch with that epoch's val loss. Users who do not want to search again read the chosen
points from here (KMnP/vpt#4 asks for exactly that).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pvera_bench.reporting.document import Output
from pvera_bench.reporting.results import method_labels

POINT_COLUMNS = (
    "backbone protocol setup method task seed point_index point selected val_loss val_nll val_top1 "
    "best_epoch epochs_run tested_epoch retrained"
).split()
CURVE_COLUMNS = "backbone protocol setup method task seed point_index epoch val_loss".split()


def grid_rows(frame: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """Per run and grid point, and per run, grid point and epoch, of every successful run in ``frame``."""
    done = frame[frame.status == "success"]
    points, curves = [], []
    for run, method in zip(done.itertuples(index=False), method_labels(done), strict=True):
        record = run.record
        retrained = bool(((record.get("config") or {}).get("protocol") or {}).get("retrain_split"))
        identity = {
            "backbone": run.backbone,
            "protocol": run.protocol,
            "setup": run.setup,
            "method": method,
            "task": run.dataset,
            "seed": run.seed,
        }
        for index, point in enumerate(record.get("grid") or []):
            selected = bool(point.get("selected"))
            points.append(
                {
                    **identity,
                    "point_index": index,
                    "point": json.dumps(point["point"], sort_keys=True),
                    "selected": selected,
                    **{key: point.get(key) for key in ("val_loss", "val_nll", "val_top1", "best_epoch", "epochs_run")},
                    "tested_epoch": record.get("best_epoch") if selected else None,
                    "retrained": retrained if selected else None,
                }
            )
            curves += [
                {**identity, "point_index": index, "epoch": epoch, "val_loss": loss}
                for epoch, loss in enumerate(point.get("val_curve") or [], start=1)
            ]
    return points, curves


def write_hyperparameters(frame: pd.DataFrame, out_dir: Path) -> Output:
    """Write ``hyperparameters.csv`` and ``validation_curves.csv``."""
    points, curves = grid_rows(frame)
    out = Output(out_dir)
    out.csv("hyperparameters.csv", pd.DataFrame(points, columns=POINT_COLUMNS))
    out.csv("validation_curves.csv", pd.DataFrame(curves, columns=CURVE_COLUMNS))
    return out
