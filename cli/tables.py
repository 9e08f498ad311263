"""CSV/Parquet tables: one column of labels, every other numeric column a feature."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from embscope.cli.checkpoint import check_readable_file
from embscope.cli.errors import UsageError
from embscope.cli.input_common import Batch, _as_labels, _unreadable


class Table:
    """A CSV/Parquet table: ``label_column`` holds labels, other numeric columns are features."""

    hint = "check that the table's numeric columns are the features the model expects, in order"

    def __init__(self, path: Path, label_column: str | None) -> None:
        import pandas as pd

        self.path = path
        check_readable_file(path, "table")
        if label_column is None:
            raise UsageError(
                "--label-column",
                f"is required for a table ({path})",
                "name the column that holds the labels",
            )
        try:
            if path.suffix.lower() in (".parquet", ".pq"):
                frame = pd.read_parquet(path)
            else:
                frame = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        except Exception as error:  # pandas/pyarrow raise many types for malformed files
            raise _unreadable(path, error) from error
        if label_column not in frame.columns:
            raise UsageError(
                "--label-column",
                f"{label_column!r} is not a column of {path}",
                f"columns are {[str(c) for c in frame.columns[:8]]}",
            )
        labels = frame[label_column]
        if labels.isna().any():
            raise UsageError(
                path, f"column {label_column!r} has empty labels", "fill or drop those rows"
            )
        if labels.dtype.kind in "biuf":
            self.labels = _as_labels(labels.to_numpy(), f"{path} [{label_column!r}]")
            self.classes = None
        else:  # names: sorted, then indexed, as for image folders
            self.classes = sorted(labels.astype(str).unique())
            index = {name: i for i, name in enumerate(self.classes)}
            self.labels = np.array(labels.astype(str).map(index), dtype=np.int64)
        features = frame.drop(columns=[label_column]).select_dtypes(include="number")
        if features.shape[1] == 0:
            raise UsageError(
                path, "has no numeric feature columns besides the labels", "add the features"
            )
        empty = features.columns[features.isna().any()].tolist()
        if empty:
            raise UsageError(
                path, f"feature columns {empty[:3]} have empty cells", "fill or drop those rows"
            )
        self.feature_names = [str(c) for c in features.columns]
        self.inputs = torch.from_numpy(features.to_numpy(dtype=np.float32))

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self), batch_size):
            yield Batch(
                self.inputs[start : start + batch_size],
                torch.from_numpy(self.labels[start : start + batch_size]),
            )
