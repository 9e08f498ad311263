"""A training run's reports, epoch by epoch: a table of every scalar metric with its interval,
trend verdicts over it, and a page of trend plots.

>>> history = History()
>>> for epoch in range(1, epochs + 1):                        # doctest: +SKIP
...     train_one_epoch(model)
...     history.append(diagnose_model(model, val_loader), epoch=epoch)
>>> for trend in history.judge():                             # doctest: +SKIP
...     print(trend)
>>> history.save("reports/history.csv")                       # doctest: +SKIP

The table has one row per (epoch, split) with columns ``epoch``, ``split`` (``"val"`` or
``"train"``), ``step``, ``interval_level`` and, for every scalar metric ``M``, ``M``, ``M.low``
and ``M.high`` (the bounds of its interval; nan without one). Rows are kept in (epoch, split)
order whatever the order of appending. The rules that judge it are in
`embscope.diagnostics.history_rules`; their track record in docs/history.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import InputError
from .report import Report

SPLITS = ("val", "train")
FIXED_COLUMNS = ("epoch", "split", "step", "interval_level")
NAN = float("nan")


class History:
    """Per-epoch reports of one training run, kept as a table of scalar metrics and intervals.

    Parameters
    ----------
    task_metric : str, optional
        The metric that says how good the model is at its task (best epoch, oscillation,
        train/validation gap). Default: ``f1`` when the reports have it (binary), else
        ``macro_f1``, else ``recall_at_1`` (embedding models without logits).
    """

    def __init__(self, *, task_metric: str | None = None) -> None:
        self._rows: dict[tuple[int, str], dict] = {}
        self._task_metric = task_metric

    # -- building --------------------------------------------------------------------------
    def append(
        self,
        report: Report,
        *,
        epoch: int | None = None,
        split: str = "val",
        step: int | None = None,
    ) -> History:
        """Add ``report`` as ``epoch`` of ``split`` (``"val"`` or ``"train"``).

        ``epoch`` defaults to one after the split's last epoch (1 for the first). Every scalar
        metric is kept with its interval. An epoch already in the split is a ValueError; so is
        a report that is not a `Report`. Returns the history (for chaining).
        """
        if not isinstance(report, Report):
            raise TypeError(f"report must be an embscope Report, got {type(report).__name__}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if epoch is None:
            epoch = max((e for e, s in self._rows if s == split), default=0) + 1
        if not _is_int(epoch):
            raise ValueError(f"epoch must be an integer, got {epoch!r}")
        if step is not None and not _is_int(step):
            raise ValueError(f"step must be an integer or None, got {step!r}")
        key = (int(epoch), split)
        if key in self._rows:
            raise ValueError(f"epoch {epoch} of split {split!r} is already in the history")
        row = {
            "epoch": int(epoch),
            "split": split,
            "step": NAN if step is None else float(step),
            "interval_level": NAN if report.interval_level is None else report.interval_level,
        }
        for name, value in report.metrics.items():
            bounds = report.intervals.get(name)
            row[name] = float(value)
            row[f"{name}.low"] = float(bounds[0]) if bounds else NAN
            row[f"{name}.high"] = float(bounds[1]) if bounds else NAN
        self._rows[key] = row
        return self

    def extend(self, reports: Iterable[Report], *, split: str = "val") -> History:
        """Append ``reports`` as consecutive epochs of ``split``."""
        for report in reports:
            self.append(report, split=split)
        return self

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def epochs(self, split: str = "val") -> list[int]:
        """The epochs of ``split``, in order."""
        return sorted(e for e, s in self._rows if s == split)

    @property
    def task_metric(self) -> str:
        """The metric the task rules read (see the class docstring)."""
        if self._task_metric is not None:
            return self._task_metric
        for name in ("f1", "macro_f1", "recall_at_1"):
            values = [r.get(name, NAN) for r in self._rows.values()]
            if any(math.isfinite(v) for v in values):
                return name
        return "macro_f1"

    def metrics(self) -> list[str]:
        """Every metric name in the history, in the order first seen."""
        seen: dict[str, None] = {}
        for row in self._sorted():
            for key in row:
                if key not in FIXED_COLUMNS and not key.endswith((".low", ".high")):
                    seen.setdefault(key, None)
        return list(seen)

    def series(self, metric: str, split: str = "val") -> dict[str, np.ndarray]:
        """``{"epoch", "value", "low", "high"}`` arrays of ``metric`` over ``split``'s epochs
        (nan where an epoch lacks it)."""
        rows = [r for r in self._sorted() if r["split"] == split]
        return {
            "epoch": np.array([r["epoch"] for r in rows], dtype=np.int64),
            "value": np.array([r.get(metric, NAN) for r in rows], dtype=float),
            "low": np.array([r.get(f"{metric}.low", NAN) for r in rows], dtype=float),
            "high": np.array([r.get(f"{metric}.high", NAN) for r in rows], dtype=float),
            "level": np.array([r.get("interval_level", NAN) for r in rows], dtype=float),
        }

    def _sorted(self) -> list[dict]:
        return [self._rows[k] for k in sorted(self._rows, key=lambda k: (k[0], SPLITS.index(k[1])))]

    def to_frame(self):
        """pandas DataFrame: one row per (epoch, split), in order; the columns of the module
        docstring."""
        import pandas as pd

        rows = self._sorted()
        columns = list(FIXED_COLUMNS)
        for name in self.metrics():
            columns += [name, f"{name}.low", f"{name}.high"]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.astype({"epoch": "int64", "split": "string"}) if len(frame) else frame

    @classmethod
    def from_frame(cls, frame, *, task_metric: str | None = None) -> History:
        """The history of a table written by :meth:`to_frame` (or :meth:`save`)."""
        missing = [c for c in ("epoch", "split") if c not in frame.columns]
        if missing:
            raise ValueError(f"the table has no column {missing[0]!r}: not an embscope history")
        history = cls(task_metric=task_metric)
        for record in frame.to_dict("records"):
            split = str(record["split"])
            if split not in SPLITS:
                raise ValueError(f"the table's split {split!r} is not one of {SPLITS}")
            epoch = record["epoch"]
            if not _is_int(epoch):
                raise ValueError(f"the table's epoch {epoch!r} is not an integer")
            key = (int(epoch), split)
            if key in history._rows:
                raise ValueError(f"the table holds epoch {epoch} of split {split!r} twice")
            row = {"epoch": int(epoch), "split": split}
            for name, value in record.items():
                if name not in ("epoch", "split"):
                    row[name] = _float(value)
            row.setdefault("step", NAN)
            row.setdefault("interval_level", NAN)
            history._rows[key] = row
        return history

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table to ``path``: CSV for ``.csv``, Parquet for ``.parquet`` (pyarrow).
        Written to a temporary file and moved into place, so a failed write leaves an earlier
        file as it was."""
        path = Path(path)
        kind = _kind(path)
        frame = self.to_frame()
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            if kind == "csv":
                frame.to_csv(temporary, index=False)
            else:
                frame.to_parquet(temporary, index=False)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, task_metric: str | None = None) -> History:
        """The history in a CSV or Parquet file written by :meth:`save`; `InputError` naming the
        file otherwise."""
        import pandas as pd

        path = Path(path)
        kind = _kind(path)
        try:
            frame = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
            return cls.from_frame(frame, task_metric=task_metric)
        except FileNotFoundError as error:
            raise InputError(str(path), "does not exist", argument="path") from error
        except (ValueError, OSError, pd.errors.ParserError) as error:
            raise InputError(
                str(path),
                f"is not an embscope history ({error})",
                "give a file written by History.save",
                argument="path",
            ) from error

    # -- judging and rendering ----------------------------------------------------------------
    def judge(self, **options) -> list:
        """The trend verdicts (`history_rules.Trend`), see `history_rules.judge` for options."""
        from .history_rules import judge

        return judge(self, **options)

    def plot_pngs(self) -> dict[str, bytes]:
        from .history_render import history_plots

        return history_plots(self)

    def to_html(self, trends: list | None = None) -> str:
        """One self-contained page: the trend verdicts and a plot per tracked metric."""
        from .history_render import history_html

        return history_html(self, self.judge() if trends is None else trends)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        val, train = self.epochs("val"), self.epochs("train")
        span = f"epochs {val[0]}-{val[-1]}" if val else "no validation epochs"
        extra = f", {len(train)} train" if train else ""
        return f"<embscope History: {len(val)} validation reports ({span}){extra}>"


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise InputError(
        str(path),
        "has neither a .csv nor a .parquet suffix",
        "name the file history.csv or history.parquet",
        argument="path",
    )


def _is_int(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value)


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return NAN
