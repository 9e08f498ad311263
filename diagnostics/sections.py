"""The report's sections as typed data: what each plot and table of a report is drawn from.

Each section is a frozen dataclass with ``to_dict()`` (its report.json form, the shape of schema
"embscope.report/1") and ``from_dict()``. Series and quantities are named by identifiers (a class
label, a role such as ``"genuine"``), never by display text: the renderers (render_*.py) own
every label, and no logic reads one. For code written against the dict sections, a section also
reads like its JSON form (``section["edges"]``, ``row["id"]``, iterating a table's rows).

``Report`` turns the dict form of a known section into its type (:func:`parse_sections`), so a
report built by hand or read from an old file holds the same objects as a computed one. Sections
of other names (added by other tools, e.g. ``"thumbnails"``) stay as given.

Over 400 lines on purpose: this module is the schema of report.json's sections, each type next
to its JSON form, so that the schema reads in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

NAN = float("nan")
MAX_CONFUSION_MATRIX = 50  # the full confusion matrix is kept up to this many classes
MAX_CONFUSIONS = 50  # the largest off-diagonal cells kept (the view beyond a full matrix)


def _num(value: Any) -> float:
    """A float from a JSON value ("nan", "inf" and None read as such)."""
    if value is None:
        return NAN
    if isinstance(value, str):
        return float(value)  # "nan", "inf", "-inf"
    return float(value)


def _opt_num(value: Any) -> float | None:
    return None if value is None else _num(value)


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(_num(v) for v in values)


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(int(round(_num(v))) for v in values)


class _JsonView:
    """Read access by the keys of the section's report.json form (for dict-style callers)."""

    def to_dict(self) -> dict:  # pragma: no cover - each section defines it
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def keys(self):
        return self.to_dict().keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()


class _Rows:
    """A table: a tuple of rows, read like the list of report.json (``len``, iteration, index)."""

    rows: tuple

    def __iter__(self) -> Iterator:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    def to_dict(self) -> list[dict]:
        return [row.to_dict() for row in self.rows]


# ----------------------------------------------------------------------------------------------
# histograms
# ----------------------------------------------------------------------------------------------

SeriesKey = int | str  # a class label, or a role (see ROLES)

# roles of series that are not one class, with the name report.json gives them
ROLES = {
    "true_class": "true class",  # one-vs-rest: the score of each sample's own class
    "other_classes": "other classes",  # one-vs-rest: the scores of the other classes
    "all": "all samples",
    "to_true_class": "to true class",  # angles to the own class weight
    "to_nearest_other": "to nearest other",  # angles to the nearest other class weight
    "genuine": "genuine",  # same-class pairs
    "impostor": "impostor",  # different-class pairs
}
_ROLE_OF_NAME = {name: role for role, name in ROLES.items()}
_CLASS_NAME = re.compile(r"class (-?\d+)")

# what a histogram's x axis measures, and the "xlabel" report.json has always carried for it
QUANTITIES = {
    "probability": "P(positive)",
    "ovr_probability": "P(class) one-vs-rest, pooled",
    "margin": None,
    "angle": "angle (degrees)",
    "cosine": "cosine similarity of a pair",
}


def series_name(key: SeriesKey) -> str:
    """The name report.json gives a series: "class 3" for a class label, else its role's."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return f"class {int(key)}"
    return ROLES.get(key, str(key))


def series_key(name: str) -> SeriesKey:
    """The inverse of :func:`series_name` (an unknown name stays a string key)."""
    match = _CLASS_NAME.fullmatch(name)
    if match:
        return int(match.group(1))
    return _ROLE_OF_NAME.get(name, name)


@dataclass(frozen=True)
class Histogram(_JsonView):
    """Counts of named series over shared bin edges (len(edges) = bins + 1).

    quantity: what the x axis measures, a key of ``QUANTITIES``; series: (key, counts) pairs in
    drawing order, key a class label or a role of ``ROLES``.
    """

    quantity: str
    edges: tuple[float, ...]
    series: tuple[tuple[SeriesKey, tuple[int, ...]], ...]

    @classmethod
    def of(cls, quantity: str, edges: Any, series: Mapping[SeriesKey, Any]) -> Histogram:
        return cls(
            quantity,
            _floats(np.asarray(edges, dtype=float).tolist()),
            tuple((k, _ints(np.asarray(v).tolist())) for k, v in series.items()),
        )

    def counts(self, key: SeriesKey) -> tuple[int, ...] | None:
        """The counts of series ``key``, or None."""
        return dict(self.series).get(key)

    def to_dict(self) -> dict:
        out = {
            "edges": list(self.edges),
            "counts": {series_name(k): list(c) for k, c in self.series},
        }
        xlabel = QUANTITIES.get(self.quantity)
        if xlabel:
            out["xlabel"] = xlabel
        return out

    @classmethod
    def from_dict(cls, d: Mapping, name: str = "") -> Histogram:
        quantity = _quantity(name, d)
        return cls(
            quantity,
            _floats(d["edges"]),
            tuple((series_key(k), _ints(v)) for k, v in d["counts"].items()),
        )


def _quantity(name: str, d: Mapping) -> str:
    """A histogram's quantity from its name in report.json (and, for scores, its series)."""
    if name == "score":
        return "ovr_probability" if "true class" in d.get("counts", {}) else "probability"
    return {"margin": "margin", "angle": "angle", "pair": "cosine"}.get(name, name)


@dataclass(frozen=True)
class Histograms(_JsonView):
    """The report's distributions: scores by true class (binary) or one-vs-rest (multi-class),
    logit margins (per class up to 10 classes), angles to the class weights (margin heads) and
    genuine / impostor pair similarities. A missing one is None."""

    margin: Histogram | None = None
    score: Histogram | None = None
    angle: Histogram | None = None
    pair: Histogram | None = None

    def items(self) -> list[tuple[str, Histogram]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)]

    def to_dict(self) -> dict:
        return {name: h.to_dict() for name, h in self.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> Histograms:
        known = {f.name for f in fields(cls)}
        return cls(**{k: Histogram.from_dict(v, k) for k, v in d.items() if k in known})


# ----------------------------------------------------------------------------------------------
# calibration and logits
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reliability(_JsonView):
    """The reliability diagram: per equal-width bin of the top-label probability its sample
    count, mean confidence and accuracy (nan in empty bins); len(edges) = bins + 1."""

    edges: tuple[float, ...]
    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]
    count: tuple[float, ...]

    def to_dict(self) -> dict:
        return {
            "edges": list(self.edges),
            "confidence": list(self.confidence),
            "accuracy": list(self.accuracy),
            "count": list(self.count),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Reliability:
        return cls(*(_floats(d[k]) for k in ("edges", "confidence", "accuracy", "count")))


@dataclass(frozen=True)
class ColumnStats(_JsonView):
    """Mean, population std, min and max of one logit column (nan without samples)."""

    mean: float
    std: float
    min: float
    max: float

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max}

    @classmethod
    def from_dict(cls, d: Mapping) -> ColumnStats:
        return cls(*(_num(d.get(k)) for k in ("mean", "std", "min", "max")))


@dataclass(frozen=True)
class LogitColumns(_JsonView):
    """Statistics of every logit column, over all samples (``columns``) and per true class
    (``by_class[k][j]``: class ``labels[k]``, column j; empty for wide logits). ``labels`` is
    empty in reports written before it was kept (see :meth:`class_labels`)."""

    columns: tuple[ColumnStats, ...]
    by_class: tuple[tuple[ColumnStats, ...], ...] = ()
    labels: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        out = {
            "col": [c.to_dict() for c in self.columns],
            "by_class": [[c.to_dict() for c in row] for row in self.by_class],
        }
        if self.labels:
            out["labels"] = list(self.labels)
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> LogitColumns:
        by_class = tuple(tuple(ColumnStats.from_dict(c) for c in row) for row in d["by_class"])
        labels = tuple(int(v) for v in d.get("labels") or ())
        return cls(tuple(ColumnStats.from_dict(c) for c in d["col"]), by_class, labels)

    def class_labels(self) -> tuple[int, ...]:
        """The label of each ``by_class`` row (reports before "labels" was kept: 0, 1, ...)."""
        return self.labels or tuple(range(len(self.by_class)))


@dataclass(frozen=True)
class ClassMargins(_JsonView):
    """Per class (sorted by label): sample count, quantiles of the logit margin (5%, 25%, 50%,
    75%, 95%) and the share of negative margins (misclassified samples)."""

    label: tuple[int, ...]
    count: tuple[int, ...]
    p05: tuple[float, ...]
    p25: tuple[float, ...]
    median: tuple[float, ...]
    p75: tuple[float, ...]
    p95: tuple[float, ...]
    negative_fraction: tuple[float, ...]

    QUANTILES: ClassVar[tuple[float, ...]] = (5, 25, 50, 75, 95)

    @classmethod
    def of(cls, margin: np.ndarray, labels: np.ndarray) -> ClassMargins:
        """From per-sample margins and their class labels (any integers)."""
        margin = np.asarray(margin, dtype=float)
        labels = np.asarray(labels)
        values = np.unique(labels)
        rows = []
        for value in values:
            m = margin[labels == value]
            q = np.percentile(m, cls.QUANTILES)
            rows.append((int(value), len(m), *map(float, q), float((m < 0).mean())))
        columns = list(zip(*rows, strict=True)) if rows else [()] * 8
        return cls(*(tuple(c) for c in columns))

    def to_dict(self) -> dict:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping) -> ClassMargins:
        return cls(
            _ints(d["label"]),
            _ints(d["count"]),
            *(_floats(d[k]) for k in ("p05", "p25", "median", "p75", "p95")),
            _floats(d["negative_fraction"]),
        )


@dataclass(frozen=True)
class Confusion(_JsonView):
    """Counts of (true class, predicted class). ``matrix[i][j]``: true ``labels[i]`` predicted
    ``labels[j]``, kept up to MAX_CONFUSION_MATRIX classes (None beyond); ``largest``: the
    largest off-diagonal cells as (true, predicted, count), largest first, at most
    MAX_CONFUSIONS (ties by label)."""

    labels: tuple[int, ...]
    matrix: tuple[tuple[int, ...], ...] | None
    largest: tuple[tuple[int, int, int], ...]

    @classmethod
    def of(cls, matrix: np.ndarray, labels: Any) -> Confusion:
        cm = np.asarray(matrix, dtype=np.int64)
        labels = tuple(int(v) for v in labels)
        order = np.argsort(labels, kind="stable")  # slots -> sorted labels
        cm = cm[np.ix_(order, order)]
        labels = tuple(labels[i] for i in order)
        off = cm.copy()
        np.fill_diagonal(off, 0)
        flat = np.flatnonzero(off)
        top = flat[np.lexsort((flat, -off.ravel()[flat]))][:MAX_CONFUSIONS]
        k = len(labels)
        largest = tuple((labels[i // k], labels[i % k], int(off.ravel()[i])) for i in top)
        full = tuple(map(tuple, cm.tolist())) if k <= MAX_CONFUSION_MATRIX else None
        return cls(labels, full, largest)

    def to_dict(self) -> dict:
        out: dict = {"labels": list(self.labels)}
        if self.matrix is not None:
            out["matrix"] = [list(r) for r in self.matrix]
        out["largest"] = [list(c) for c in self.largest]
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> Confusion:
        matrix = d.get("matrix")
        return cls(
            _ints(d["labels"]),
            None if matrix is None else tuple(_ints(r) for r in matrix),
            tuple(tuple(_ints(c)) for c in d.get("largest", ())),
        )


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassRow(_JsonView):
    """One class: its label, sample count, the norm of its mean embedding, its spread (mean
    squared distance to the mean), and with logits its recall and how often it is predicted."""

    label: int
    count: int
    mean_norm: float
    spread: float
    recall: float | None = None
    predicted: int | None = None

    def to_dict(self) -> dict:
        out = {
            "label": self.label,
            "count": self.count,
            "mean_norm": self.mean_norm,
            "spread": self.spread,
        }
        if self.recall is not None:
            out["recall"] = self.recall
        if self.predicted is not None:
            out["predicted"] = self.predicted
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> ClassRow:
        return cls(
            int(d["label"]),
            int(_num(d["count"])),
            _num(d.get("mean_norm")),
            _num(d.get("spread")),
            _opt_num(d.get("recall")),
            None if d.get("predicted") is None else int(_num(d["predicted"])),
        )


@dataclass(frozen=True)
class ClassTable(_Rows):
    """One row per class present, by label."""

    rows: tuple[ClassRow, ...] = ()

    @classmethod
    def from_dict(cls, d: list) -> ClassTable:
        return cls(tuple(ClassRow.from_dict(r) for r in d))


@dataclass(frozen=True)
class HardSample(_JsonView):
    """A sample with one of the smallest logit margins: its id, true label, margin, and (when
    known) the predicted class and its probability."""

    id: str
    label: int
    margin: float
    predicted: int | None = None
    top_prob: float | None = None

    def to_dict(self) -> dict:
        out = {"id": self.id, "label": self.label, "margin": self.margin}
        if self.predicted is not None:
            out["predicted"] = self.predicted
        if self.top_prob is not None:
            out["top_prob"] = self.top_prob
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> HardSample:
        return cls(
            str(d["id"]),
            int(d["label"]),
            _num(d["margin"]),
            None if d.get("predicted") is None else int(d["predicted"]),
            _opt_num(d.get("top_prob")),
        )


@dataclass(frozen=True)
class Hardest(_Rows):
    """The samples with the smallest logit margins, hardest first (empty without logits)."""

    rows: tuple[HardSample, ...] = ()

    @classmethod
    def from_dict(cls, d: list) -> Hardest:
        return cls(tuple(HardSample.from_dict(r) for r in d))


# ----------------------------------------------------------------------------------------------
# the head and the embedding view
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head(_JsonView):
    """The margin head's settings: kind ("angular", "additive", ... or "unknown"), m (radians),
    s, classes, and whether its weights were known (False: only stated settings)."""

    kind: str
    m: float | None
    s: float | None
    num_classes: int
    weights: bool = True

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "m": self.m, "s": self.s, "num_classes": self.num_classes}
        if not self.weights:
            out["weights"] = False
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> Head:
        return cls(
            str(d.get("kind") or "unknown"),
            _opt_num(d.get("m")),
            _opt_num(d.get("s")),
            int(d.get("num_classes", 0)),
            bool(d.get("weights", True)),
        )


@dataclass(frozen=True)
class Pca(_JsonView):
    """2-D PCA coordinates of a bounded sample of embeddings and their class labels."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    label: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"x": list(self.x), "y": list(self.y), "label": list(self.label)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Pca:
        return cls(_floats(d["x"]), _floats(d["y"]), _ints(d["label"]))


# ----------------------------------------------------------------------------------------------
# the report's sections
# ----------------------------------------------------------------------------------------------

SECTION_TYPES: dict[str, Any] = {
    "histograms": Histograms,
    "reliability": Reliability,
    "logit_columns": LogitColumns,
    "class_margins": ClassMargins,
    "confusion": Confusion,
    "classes": ClassTable,
    "hardest": Hardest,
    "head": Head,
    "pca": Pca,
}


def parse_sections(sections: Mapping | None) -> dict:
    """Sections with every known one in its type: the dict form of report.json is read with its
    type's ``from_dict``; typed sections, sections of other names, and a known section whose
    data does not have its shape (kept as it was, so the file round-trips) stay as given."""
    out = {}
    for name, value in (sections or {}).items():
        kind = SECTION_TYPES.get(name)
        if kind is not None and isinstance(value, (dict, list)):
            try:
                value = kind.from_dict(value)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError):
                pass
        out[name] = value
    return out


def sections_to_dict(sections: Mapping) -> dict:
    """The report.json form of the sections (values still Python floats, nan included)."""
    return {
        name: value.to_dict() if isinstance(value, (_JsonView, _Rows)) else value
        for name, value in sections.items()
    }
