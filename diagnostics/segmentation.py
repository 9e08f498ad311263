"""Dense predictions: the streaming state of a segmentation evaluation.

Just over 400 lines: one class, DenseState, whose update, merge and compaction must be read
together; the metrics are in segmentation_metrics.py, the report in segmentation_report.py.

A :class:`~embscope.diagnostics.Diagnoser` fed masks ``[B, H, W]`` (any ``[B, ...]``) with
logits ``[B, C, H, W]`` (``[B, C, ...]``) hands the batch to a :class:`DenseState`. Every
labelled pixel (mask value other than ``ignore_index``) enters, exactly:

- the pixel confusion matrix (true x predicted class), float64 holding exact integer counts up
  to 2^53 pixels;
- per-class one-vs-rest probability histograms (``p_k`` of class-k pixels and of all pixels,
  with the sum of ``p_k`` per bin): per-class calibration;
- per-class gray-zone counts (top-1 minus top-2 probability below 0.2, as for samples);
- per image group: true positives, false positives, false negatives, images where the class
  is present and where it is found (>= 1 pixel right), the cross-entropy and the part of it
  from easy pixels (p_true > 0.9), per class. Images are hashed on their mask and prediction
  into ``IMAGE_GROUPS`` groups, so the intervals can resample whole images (pixels within an
  image are not independent) from a state of fixed size.

Embeddings (``[B, D, H, W]``, or the logits themselves when none are given) go into a
class-stratified sample of pixels: one content-hashed reservoir per class (``reservoir.py``),
so small classes are represented and the sample does not depend on batching or order. The
worst images (lowest mean IoU) keep small thumbnails of their true and predicted masks.

A twin :class:`~embscope.diagnostics.Diagnoser` (same options, no reservoir) is fed every
labelled pixel as a row and its per-sample lists emptied after each batch, so its fixed-shape
state (class sums, confusion, logit column statistics, one-vs-rest histograms, calibration
bins) stays exact and bounded; the report computes those metrics from it. Images are taken a
few at a time (``CHUNK`` logit values), so a batch of large images holds no float64 copy of
all its logits.

The fixed-shape fields are declared in ``FIELDS`` with their reductions (``state.py``'s
mechanism): reset, merge and sync are derived from the table. The reservoirs and the worst
images have their own rules (smallest keys; lowest scores), the twin its Diagnoser's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import state as S
from ._validation import as_tensor
from .reservoir import _GOLDEN, Reservoir, _mix

IMAGE_GROUPS = 256  # images are resampled as units through this many hash groups
HIST_BINS = 100  # one-vs-rest probability histograms per class
EASY_P = 0.9  # an "easy" pixel: probability of its true class above this
GRAY = 0.2  # top-1 minus top-2 probability below this: undecided (as logits.py)
THUMB = 48  # worst-image thumbnails: at most this many pixels on the long side
WORST_K = 8  # worst images kept
CHUNK = 1 << 22  # logit values processed at once (images are taken a few at a time)
# per image group and class: true positives, false positives, false negatives, images with the
# class, images where it was found, cross-entropy, cross-entropy of easy pixels
GROUP_COLUMNS = ("tp", "fp", "fn", "present", "found", "ce", "ce_easy")


@dataclass(frozen=True)
class DenseLayout:
    """``k`` classes (logit columns)."""

    k: int


def _k2(layout):
    return (layout.k, layout.k)


def _hist(layout):
    return (layout.k, HIST_BINS)


FIELDS: dict[str, S.Field] = {
    "confusion": S.Field("sum", _k2),
    "pos_hist": S.Field("sum", _hist),  # p_k of pixels of class k
    "all_hist": S.Field("sum", _hist),  # p_k of every pixel
    "all_psum": S.Field("sum", _hist),  # sum of p_k per bin of all_hist
    "gray": S.Field("sum", lambda layout: (layout.k,)),  # undecided pixels per true class
    "groups": S.Field("sum", lambda layout: (IMAGE_GROUPS, layout.k, len(GROUP_COLUMNS))),
    "images": S.Field("sum", lambda layout: ()),
    "ignored": S.Field("sum", lambda layout: ()),
    "nonfinite": S.Field("sum", lambda layout: ()),  # labelled pixels with NaN/Inf outputs
}


def is_dense(labels, logits) -> bool:
    """Whether a batch is dense: masks ``[B, ...]`` of two or more axes, or logits of three."""
    shape = getattr(labels, "shape", None)
    zshape = getattr(logits, "shape", None)
    return (shape is not None and len(shape) >= 2 and not (len(shape) == 2 and shape[1] == 1)) or (
        zshape is not None and len(zshape) >= 3
    )


class DenseState:
    """Streaming state of a segmentation evaluation (see the module docstring).

    ``capacity``: stored pixels in all (each class's reservoir holds ``capacity // C``).
    """

    def __init__(
        self, *, ignore_index: int = 255, capacity: int = 10_000, seed: int = 0, twin=None
    ):
        # ``twin``: a Diagnoser (same options, no reservoir) fed every labelled pixel, whose
        # per-sample lists are emptied after each batch: its fixed-shape state (class sums,
        # confusion, logit column statistics, one-vs-rest histograms, calibration bins) stays
        # exact and bounded, and the report computes those metrics from it
        self.twin = twin
        self.ignore_index = int(ignore_index)
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.k: int | None = None
        self.dim: int | None = None
        self.embedded: bool | None = None  # True: embeddings given; False: logits stand in
        self.state: dict = {}
        self.reservoirs: list[Reservoir] = []
        self.worst: list[dict] = []  # kept sorted by (score, key)

    # -- shapes --------------------------------------------------------------------------------
    def _check(self, x, y, z) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        if z is None:
            raise ValueError(
                f"masks of shape {tuple(y.shape)} need logits [B, C, ...] with one column "
                "per class (the predictions are read from them)"
            )
        z = as_tensor(z, "logits")
        y = as_tensor(y, "labels")
        if z.ndim != y.ndim + 1 or z.shape[0] != y.shape[0] or z.shape[2:] != y.shape[1:]:
            raise ValueError(
                f"dense logits must be [B, C, *mask shape]: masks have shape {tuple(y.shape)}, "
                f"logits {tuple(z.shape)} (upsample the logits to the mask size)"
            )
        if z.shape[1] < 2:
            raise ValueError(f"dense logits need C >= 2 class columns, got shape {tuple(z.shape)}")
        if not torch.is_floating_point(z):
            raise TypeError(f"logits must be floating point, got {z.dtype}")
        if torch.is_floating_point(y):
            if not bool((y == y.round()).all()):
                raise ValueError("masks must hold integer class indices, got fractional values")
        elif y.dtype == torch.bool:
            pass
        elif y.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
            raise TypeError(f"masks must hold integers, got {y.dtype}")
        y = y.long()
        if self.k is not None and z.shape[1] != self.k:
            raise ValueError(
                f"logits must keep C = {self.k} columns across batches, got {z.shape[1]}"
            )
        labelled = y[y != self.ignore_index]
        if labelled.numel() and (int(labelled.min()) < 0 or int(labelled.max()) >= z.shape[1]):
            raise ValueError(
                f"mask values must lie in [0, {z.shape[1]}) (logit columns) or equal "
                f"ignore_index={self.ignore_index}; got {int(labelled.min())} to "
                f"{int(labelled.max())}"
            )
        if x is not None:
            x = as_tensor(x, "embeddings")
            if x.ndim != z.ndim or x.shape[0] != z.shape[0] or x.shape[2:] != z.shape[2:]:
                raise ValueError(
                    f"dense embeddings must be [B, D, *mask shape]: masks have shape "
                    f"{tuple(y.shape)}, embeddings {tuple(x.shape)} (upsample the feature map "
                    "to the mask size)"
                )
            if not torch.is_floating_point(x):
                x = x.float()
        if self.k is not None:
            if (x is not None) != self.embedded:
                raise ValueError("embeddings must be given for every batch or for none")
            if x is not None and x.shape[1] != self.dim:
                raise ValueError(
                    f"embeddings must keep D = {self.dim} channels across batches, got {x.shape[1]}"
                )
        return x, y, z

    def _start(self, k: int, dim: int, embedded: bool) -> None:
        self.k, self.dim, self.embedded = k, dim, embedded
        self.state = S.empty(DenseLayout(k), FIELDS)
        per_class = max(1, self.capacity // k) if self.capacity else 0
        self.reservoirs = [Reservoir(per_class, self.seed) for _ in range(k)]

    # -- update --------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, embeddings, masks, logits, ids=None) -> None:
        x, y, z = self._check(embeddings, masks, logits)
        if ids is not None and len(ids) != y.shape[0]:
            raise ValueError(f"ids must hold one entry per image ({y.shape[0]}), got {len(ids)}")
        b, k = z.shape[0], z.shape[1]
        if self.k is None:
            self._start(k, k if x is None else x.shape[1], x is not None)
        # a few images at a time: the float64 log-probabilities stay under CHUNK values
        step = max(1, CHUNK // max(1, z[0].numel()))
        for a in range(0, b, step):
            part = None if ids is None else ids[a : a + step]
            xs = None if x is None else x[a : a + step]
            self._update(xs, y[a : a + step], z[a : a + step], part, y.shape[1:])

    def _update(self, x, y, z, ids, shape) -> None:
        b, k = z.shape[0], z.shape[1]
        y = y.reshape(b, -1).to(z.device)
        zf = z.reshape(b, k, -1).transpose(1, 2)  # [B, P, C]
        xf = zf if x is None else x.reshape(b, x.shape[1], -1).transpose(1, 2).to(z.device)
        finite = torch.isfinite(zf).all(2) & torch.isfinite(xf).all(2)
        labelled = y != self.ignore_index
        keep = labelled & finite
        self.state["ignored"] += float((~labelled).sum())
        self.state["nonfinite"] += float((labelled & ~finite).sum())
        self.state["images"] += float(b)
        zk = zf[keep].float()  # [M, C]: the labelled pixels with finite outputs
        xk = zk if x is None else xf[keep].float()
        lp = torch.log_softmax(zk.double(), dim=1)
        p = lp.argmax(1)
        pred = torch.full_like(y, -1)  # -1 where nothing is predicted (ignored or NaN/Inf)
        pred[keep] = p
        img = torch.arange(b, device=y.device)[:, None].expand_as(y)
        t, i = y[keep], img[keep]
        self.state["confusion"] += _bincount(t * k + p, k * k).reshape(k, k)
        prob = lp.exp()
        bins = (prob * HIST_BINS).long().clamp_(max=HIST_BINS - 1)  # [M, C]
        cls = torch.arange(k, device=prob.device)
        flat = (cls * HIST_BINS)[None, :] + bins
        self.state["all_hist"] += _bincount(flat.reshape(-1), k * HIST_BINS).reshape(k, -1)
        self.state["all_psum"] += _bincount(
            flat.reshape(-1), k * HIST_BINS, prob.reshape(-1)
        ).reshape(k, -1)
        own = bins.gather(1, t[:, None])[:, 0]
        self.state["pos_hist"] += _bincount(t * HIST_BINS + own, k * HIST_BINS).reshape(k, -1)
        top2 = prob.topk(2, dim=1).values
        gray = (top2[:, 0] - top2[:, 1]) < GRAY
        self.state["gray"] += _bincount(t[gray], k)
        # per image: tp, fp, fn, presence, cross-entropy (easy part)
        lt = lp.gather(1, t[:, None])[:, 0]
        ce, easy = -lt, lt.exp() > EASY_P
        tp = _bincount((i * k + t)[t == p], b * k).reshape(b, k)
        true_n = _bincount(i * k + t, b * k).reshape(b, k)
        pred_n = _bincount(i * k + p, b * k).reshape(b, k)
        ce_img = _bincount(i * k + t, b * k, ce).reshape(b, k)
        easy_img = _bincount((i * k + t)[easy], b * k, ce[easy]).reshape(b, k)
        rows = torch.stack(
            [
                tp,
                pred_n - tp,
                true_n - tp,
                (true_n > 0).double(),
                (tp > 0).double(),
                ce_img,
                easy_img,
            ],
            dim=2,
        )
        keys = _image_keys(masks_flat=y, pred=pred, k=k, seed=self.seed)
        self.state["groups"].index_add_(0, (keys % IMAGE_GROUPS).cpu(), rows.cpu())
        self._worst(rows, keys, y, pred, shape, ids)
        # the class-stratified pixel sample: embeddings (or logits) with the logits
        sample = torch.cat([xk, zk], 1) if x is not None else zk
        for c in torch.unique(t).tolist():
            sel = t == c
            self.reservoirs[c].update(sample[sel], t[sel])
        if self.twin is not None and len(t):
            self.twin.update(xk, t, zk)
            for name in S.cat_fields():
                self.twin.state[name].clear()

    def _worst(self, rows, keys, y, pred, shape, ids) -> None:
        """Keep the WORST_K images of lowest mean IoU (over classes true or predicted there),
        ties broken by their key, with thumbnails of their masks."""
        tp, fp, fn = rows[..., 0], rows[..., 1], rows[..., 2]
        union = tp + fp + fn
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
        score = torch.nanmean(iou, dim=1)
        cands = []
        for j in range(len(score)):
            s = float(score[j])
            if s != s:  # nothing labelled in this image
                continue
            cands.append((s, int(keys[j]), j))
        cands.sort()
        bound = self.worst[-1]["order"] if len(self.worst) >= WORST_K else None
        for s, key, j in cands[:WORST_K]:
            if bound is not None and (s, key) >= bound:
                break
            true = y[j].reshape(shape)
            predicted = torch.where(y[j] == self.ignore_index, self.ignore_index, pred[j]).reshape(
                shape
            )
            self.worst.append(
                {
                    "order": (s, key),
                    "mean_iou": s,
                    "id": None if ids is None else str(ids[j]),
                    "true": _thumb(true),
                    "pred": _thumb(predicted),
                }
            )
        self.worst = sorted(self.worst, key=lambda w: w["order"])[:WORST_K]

    # -- merge ---------------------------------------------------------------------------------
    def merge(self, other: DenseState) -> DenseState:
        if (other.ignore_index, other.capacity, other.seed) != (
            self.ignore_index,
            self.capacity,
            self.seed,
        ):
            raise ValueError("cannot merge dense states built with different options")
        if other.k is None:
            return self
        if self.k is None:
            self._start(other.k, other.dim, other.embedded)
        if (other.k, other.dim, other.embedded) != (self.k, self.dim, self.embedded):
            raise ValueError(
                f"cannot merge: C {other.k} vs {self.k}, D {other.dim} vs {self.dim}, "
                f"embeddings given {other.embedded} vs {self.embedded}"
            )
        S.merge(self.state, other.state, torch.zeros(0, dtype=torch.int64), FIELDS)
        if self.twin is not None and other.twin is not None:
            self.twin.merge(other.twin)
        for mine, theirs in zip(self.reservoirs, other.reservoirs, strict=True):
            mine.merge(theirs)
        self.worst = sorted(self.worst + other.worst, key=lambda w: w["order"])[:WORST_K]
        return self

    def sync(self, group=None) -> DenseState:
        """Fold every rank's state into this one (all ranks end equal): the fixed-shape fields
        by one packed all-reduce (``distributed._all_reduce_packed``), the bounded rest
        (reservoirs, worst images) gathered as objects and merged in rank order."""
        from .distributed import _all_reduce_packed, _dist, collective_device

        dist = _dist()
        world = dist.get_world_size(group)
        descs: list = [None] * world
        dist.all_gather_object(
            descs, (self.k, self.dim, self.embedded, self.reservoirs, self.worst), group=group
        )
        live = [d for d in descs if d[0] is not None]
        if not live:
            return self
        k, dim, embedded = live[0][:3]
        if any(d[:3] != (k, dim, embedded) for d in live):
            raise ValueError(
                "cannot sync: ranks saw dense batches of different shapes (C, D, embeddings "
                f"given): {[d[:3] for d in live]}"
            )
        if self.k is None:
            self._start(k, dim, embedded)
        if self.twin is not None:
            self.twin.sync(group)
        sums = S.remapped(self.state, DenseLayout(k), torch.arange(k), "sum", FIELDS)
        reduced = _all_reduce_packed(sums, dist.ReduceOp.SUM, group, collective_device(group))
        self.state = reduced
        self.reservoirs = [Reservoir(r.capacity, r.seed) for r in self.reservoirs]
        self.worst = []
        for _, _, _, reservoirs, worst in live:
            for mine, theirs in zip(self.reservoirs, reservoirs, strict=True):
                mine.merge(theirs)
            self.worst = sorted(self.worst + worst, key=lambda w: w["order"])[:WORST_K]
        return self

    # -- the stratified sample -----------------------------------------------------------------
    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows [m, D], labels [m], logits [m, C]) of the pixel sample, by class then key."""
        parts, labels = [], []
        for c, r in enumerate(self.reservoirs):
            if len(r):
                order = torch.argsort(r.keys, stable=True)
                parts.append(r.rows[order])
                labels.append(torch.full((len(r),), c, dtype=torch.int64))
        if not parts:
            empty = torch.zeros(0, (self.dim or 0) + (self.k or 0))
            return empty[:, : self.dim], torch.zeros(0, dtype=torch.int64), empty[:, self.dim :]
        rows = torch.cat(parts)
        y = torch.cat(labels)
        if self.embedded:
            return rows[:, : self.dim], y, rows[:, self.dim :]
        return rows, y, rows

    @property
    def sampled_pixels(self) -> int:
        return sum(len(r) for r in self.reservoirs)

    @property
    def seen_pixels(self) -> int:
        return sum(r.seen for r in self.reservoirs)


def _bincount(index: torch.Tensor, size: int, weights: torch.Tensor | None = None):
    return (
        torch.bincount(
            index.reshape(-1), weights=None if weights is None else weights.double(), minlength=size
        )
        .double()
        .cpu()[:size]
    )


def _image_keys(*, masks_flat: torch.Tensor, pred: torch.Tensor, k: int, seed: int):
    """A 63-bit key per image from its mask and prediction (positions included): the same in
    any batch, on any device."""
    pos = torch.arange(masks_flat.shape[1], device=masks_flat.device, dtype=torch.int64)
    code = masks_flat * (k + 1) + pred + 1
    h = _mix(pos[None, :] * _GOLDEN ^ _mix(code * _GOLDEN + seed))
    return (h.sum(1) & ((1 << 63) - 1)).cpu()


def _thumb(mask: torch.Tensor) -> list[list[int]]:
    """A nearest-neighbour thumbnail (at most THUMB pixels on the long side) of a 2-D mask
    (higher-dimensional masks: their first 2-D slice)."""
    while mask.ndim > 2:
        mask = mask[..., mask.shape[-1] // 2]
    if mask.ndim == 1:
        mask = mask[None, :]
    h, w = mask.shape
    step = max(1, -(-max(h, w) // THUMB))
    return mask[::step, ::step].to("cpu", torch.int64).tolist()
