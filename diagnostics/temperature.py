"""The temperature T > 0 minimising the NLL of softmax(z / T), fitted on rows.

The NLL of softmax(z / T) is not a function of any fixed set of sums, so T is fitted on rows:
on every margin for one logit or two columns (the Diagnoser keeps them), on the reservoir's
logits for three or more columns. A fixed grid of temperatures would stream exactly, but costs
B x C x (grid size) exponentials per batch, a large share of a whole diagnose run; the fit on
rows costs a few passes over the margins or over at most ``reservoir_size`` rows of logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._threads import one_thread

NAN = float("nan")
T_MIN, T_MAX = 0.01, 100.0  # the fitted temperature is searched in [T_MIN, T_MAX]
_NARROW = 16  # logits of up to this many columns are handled in float64 (cheap)


@dataclass(frozen=True)
class TemperatureFit:
    """temperature: the NLL-optimal T in [T_MIN, T_MAX] (nan when undefined); at_edge: True
    when the NLL still decreases at the end of the search range, so the value is a bound;
    reason: why it is nan or a bound (None for an interior optimum)."""

    temperature: float
    at_edge: bool = False
    reason: str | None = None


def _binary_margins(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log P(true) / P(other) of binary logits, float64: (2y - 1) z for [N], z_y - z_other for
    [N, 2], in the logits' dtype first (as the :class:`Diagnoser` keeps its margins)."""
    if z.ndim == 1:
        return ((2 * y - 1).to(z.dtype) * z).double()
    return (z.gather(1, y[:, None])[:, 0] - z.gather(1, (1 - y)[:, None])[:, 0]).double()


class _NLL:
    """The first two derivatives in u = 1 / T of the mean NLL of softmax(u z) over rows.

    NLL(u) = mean_i [logsumexp(u z_i) - u z_iy] is convex in u: d/du = mean(E_p[z] - z_y),
    d2/du2 = mean(Var_p[z]) >= 0 with p = softmax(u z_i). A binary model is the two-column
    case with the margin m = z_y - z_other: NLL(u) = mean softplus(-u m), d/du = -mean(m q),
    d2/du2 = mean(m^2 q (1 - q)) with q = sigmoid(-u m). Wide logits are evaluated in their
    dtype (float32 row sums of at most a few thousand terms, float64 means), in blocks of rows.
    """

    _BLOCK = 1 << 21  # elements of one block of rows

    def __init__(self, margins: torch.Tensor | None = None, logits=None, labels=None):
        if margins is not None:
            self.m = margins.double()
            self.m2 = self.m.square()
            self.tol = 1e-10
            self.flat = not bool((self.m != 0).any())
        else:
            self.m = None
            z = logits if logits.shape[1] > _NARROW else logits.double()
            self.d = z - z.amax(dim=1, keepdim=True)  # <= 0: exp never overflows
            self.d2 = self.d.square()
            self.d_y = self.d.gather(1, labels[:, None])[:, 0].double()
            # float32 row sums bound how well the root can be told apart from its neighbours
            self.tol = 1e-10 if self.d.dtype == torch.float64 else 1e-6
            self.flat = not bool((self.d != 0).any())

    def derivatives(self, u: float) -> tuple[float, float]:
        if self.m is not None:
            q = torch.sigmoid(self.m * -u)
            return float(-(self.m * q).mean()), float((self.m2 * q * (1 - q)).mean())
        n, c = self.d.shape
        rows = max(1, self._BLOCK // c)
        g1 = g2 = 0.0
        for a in range(0, n, rows):
            d = self.d[a : a + rows]
            e = (d * u).exp_()
            s = e.sum(dim=1).double()
            ed = torch.einsum("bc,bc->b", e, d).double() / s
            ed2 = torch.einsum("bc,bc->b", e, self.d2[a : a + rows]).double() / s
            g1 += float((ed - self.d_y[a : a + rows]).sum())
            g2 += float((ed2 - ed.square()).clamp_min(0).sum())
        return g1 / n, g2 / n


def _fit_temperature(
    *, margins: torch.Tensor | None = None, logits=None, labels=None
) -> TemperatureFit:
    """The T in [T_MIN, T_MAX] minimising the NLL of softmax(z / T) on these rows.

    Give ``margins`` (binary: log P(true) / P(other) per row) or ``logits`` [N, C] with
    ``labels``. The NLL is convex in u = 1 / T, so its minimiser is the root of the first
    derivative: safeguarded Newton steps in u from u = 1 inside the bracket [1 / T_MAX,
    1 / T_MIN], to a relative step of 1e-10 (1e-6 for float32 logits wider than 16 columns,
    whose float32 row sums blur the root). When the derivative has the same sign at u = 1 and
    at the end it points to, the NLL is monotone on that side and that end is returned with
    ``at_edge`` (the logits separate every sample: T -> 0; or they carry no information about
    the labels: T -> inf).
    """
    n = len(margins) if margins is not None else len(labels)
    if n == 0:
        return TemperatureFit(NAN, reason="no samples")
    # one thread: these passes are short (threads fight on a busy machine: 10 ms per pass on
    # 470,000 margins on one thread, 64 ms on two), and the sums do not depend on the count
    with one_thread():
        return _newton(_NLL(margins, logits, labels))


def _newton(f: _NLL) -> TemperatureFit:
    """Safeguarded Newton on d NLL / du (``rtsafe``, Numerical Recipes 9.4): a Newton step
    when it stays inside the bracket and at least halves the last step, else the bracket's
    geometric midpoint."""
    if f.flat:
        return TemperatureFit(
            NAN, reason="the NLL does not depend on T: every row's logits are all equal"
        )
    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    u = 1.0
    g, h = f.derivatives(u)
    # the root lies on the side of u = 1 where the derivative changes sign: check that end
    if g > 0 and f.derivatives(lo)[0] >= 0:
        return TemperatureFit(
            T_MAX,
            True,
            f"the NLL still decreases at T = {T_MAX:g}, the upper end of the search: uniform "
            "probabilities fit the labels better than sharper ones (the logits carry no "
            f"usable information about them); T >= {T_MAX:g} (a bound)",
        )
    if g < 0 and f.derivatives(hi)[0] <= 0:
        return TemperatureFit(
            T_MIN,
            True,
            f"the NLL still decreases at T = {T_MIN:g}, the lower end of the search: the "
            "logits separate (almost) every sample correctly, so sharper is always better; "
            f"T <= {T_MIN:g} (a bound)",
        )
    last = hi - lo  # the step before the last one
    step = last
    for _ in range(200):
        if g > 0:
            hi = u
        elif g < 0:
            lo = u
        else:
            break
        newton = u - g / h if h > 0 else math.nan
        if lo < newton < hi and abs(2 * g) <= abs(last * h):
            last, step = step, u - newton
            u = newton
        else:
            last = step
            new = math.sqrt(lo * hi)
            step = u - new
            u = new
        if abs(step) <= f.tol * u:
            break
        g, h = f.derivatives(u)
    return TemperatureFit(1.0 / u)
