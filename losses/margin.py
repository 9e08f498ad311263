"""Additive-margin softmax heads: one base, one override point, ArcFace and CosFace on it."""

from __future__ import annotations

import abc
import math

import torch
from torch import nn

from ._autograd import margin_cross_entropy, margin_logits
from ._validation import check_class_labels, check_embedding, check_positive_int, check_real
from .registry import register_head

# Floor of 1 - cos^2 under the square root: keeps d sin / d cos = -cos / sin finite at cos = +-1.
_SIN2_EPS = 1e-6


class MarginHead(nn.Module, abc.ABC):
    r"""Normalised softmax head whose target-class cosine is modified by a margin.

    ``logits[i, j] = s * cos(theta_ij)`` with ``cos(theta_ij) = <x_i / |x_i|, w_j / |w_j|>``;
    in training mode with labels the target entry becomes ``s * psi(cos(theta_i,y_i))``, where
    ``psi`` is :meth:`_target_logit`, the single method a subclass overrides. In eval mode, or
    without labels, the output is ``s * cos`` whether or not labels are passed, so validation
    logits never carry the margin. A subclass may also override :meth:`_target_logit_and_slope`
    (``psi`` and its derivative in one call, without autograd: a faster training step); it is
    used only where it is defined by the same class as ``_target_logit`` or a subclass of it, so
    a subclass that overrides only ``_target_logit`` never inherits a stale derivative.

    Train with ``F.cross_entropy(head(embedding, labels), labels)`` or with :meth:`loss`, the
    same value fused and faster. Both run through hand-written backward passes that touch the
    ``[B, C]`` matrix only as the three matrix products require (``_autograd.py``); they support
    one backward pass (double backward raises). Validating the labels costs one device sync
    (an out-of-range label would otherwise trigger a device-side assert on CUDA).

    Parameters
    ----------
    embedding_dim : int
        D, the size of the embeddings.
    num_classes : int
        C >= 2.
    m : float
        Margin, >= 0, in the unit of the subclass (radians for ArcFace, cosine for CosFace).
    s : float
        Scale, > 0.

    Attributes
    ----------
    weight : nn.Parameter
        Class weights ``[C, D]`` (one row per class, normalised on use).
    m, s : float
        Validated on assignment.
    """

    #: whether ``_target_logit_and_slope`` describes this class's ``_target_logit``
    _has_slope: bool = False

    #: the kind of margin, read by diagnostics: "angular" (added to the angle, ArcFace-like:
    #: m in radians, a fallback region where t + m > pi) or "cosine" (subtracted from the
    #: cosine, CosFace-like). A subclass declares its own; None means not declared.
    margin_type: str | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for klass in cls.__mro__:  # the most derived class defining either method decides
            if klass is MarginHead:
                break
            if "_target_logit_and_slope" in vars(klass):
                cls._has_slope = True
                break
            if "_target_logit" in vars(klass):
                cls._has_slope = False
                break

    def __init__(self, embedding_dim: int, num_classes: int, m: float, s: float) -> None:
        super().__init__()
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.m = m
        self.s = s

    @property
    def m(self) -> float:
        """The margin (see the subclass for its unit)."""
        return self._m

    @m.setter
    def m(self, value: float) -> None:
        self._m = self._check_margin(value)

    @property
    def s(self) -> float:
        """The logit scale, > 0."""
        return self._s

    @s.setter
    def s(self, value: float) -> None:
        self._s = check_real(value, "s", low=0.0, low_open=True)

    def _check_margin(self, value: float) -> float:
        return check_real(value, "m", low=0.0)

    @abc.abstractmethod
    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        """Map the ``[B]`` target-class cosines to their margin-modified cosines.

        Called only in training with labels, on float32 (or float64) values; differentiated by
        autograd on those B values.
        """

    def _target_logit_and_slope(
        self, cos_target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``_target_logit(cos_target)`` and its derivative with respect to ``cos_target``
        (``None`` where it is 1 everywhere), elementwise on a ``[B, 1]`` tensor, by plain tensor
        operations (no autograd). Optional: training then skips the autograd pass over the
        margin. The value must equal ``_target_logit``'s bit for bit, the derivative autograd's
        (with the same conventions at kinks and clamps).
        """
        raise NotImplementedError

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        """Cosine between each embedding and each class weight.

        Parameters
        ----------
        embedding : Tensor ``[B, D]``

        Returns
        -------
        Tensor ``[B, C]`` in ``[-1, 1]``; higher means closer to the class.
        """
        check_embedding(embedding, self.embedding_dim)
        return margin_logits(embedding, self.weight, None, 1.0, None)

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled logits ``[B, C]``: ``s * cos``, with the margin on the target class only in
        training mode when ``labels`` (integer ``[B]`` in ``[0, C)``) are given."""
        check_embedding(embedding, self.embedding_dim)
        if not (self.training and labels is not None):
            return margin_logits(embedding, self.weight, None, self._s, None)
        check_class_labels(labels, embedding.shape[0], self.num_classes)
        return margin_logits(
            embedding, self.weight, labels.to(embedding.device), self._s, *self._margin()
        )

    def loss(self, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits, with the margin in training mode.

        Equals ``F.cross_entropy(self(embedding, labels), labels)`` but fused: no one-hot or
        separate ``[B, C]`` gradient matrix is built, which makes it the fastest way to train
        the head (see ``benchmarks/bench_losses.py``).
        """
        check_embedding(embedding, self.embedding_dim)
        check_class_labels(labels, embedding.shape[0], self.num_classes)
        margin = self._margin() if self.training else (None, None)
        return margin_cross_entropy(
            embedding, self.weight, labels.to(embedding.device), self._s, *margin
        )

    def _margin(self):
        """``(fn, slope_fn)`` for the fused kernels: one of them, the other ``None``."""
        if self._has_slope:
            return None, self._target_logit_and_slope
        return self._target_logit, None

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
            f"m={self._m:g}, s={self._s:g}"
        )


@register_head("arcface")
class ArcFaceHead(MarginHead):
    r"""ArcFace: additive angular margin, ``psi(cos t) = cos(t + m)``.

    Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.

    ``cos(t + m) = cos t cos m - sin t sin m`` with ``sin t = sqrt(max(1 - cos^2 t, 1e-6))``
    (no ``acos``; finite gradients at ``cos t = +-1``). Where ``t + m > pi`` the target logit
    would rise again with ``t``; there the paper's fallback ``cos t - m sin m`` is used
    (``cos t <= cos(pi - m)``), or with ``easy_margin=True`` the margin is applied only where
    ``cos t > 0`` and the cosine left unchanged elsewhere.

    Parameters
    ----------
    embedding_dim, num_classes : int
    m : float
        Angular margin in radians, ``0 <= m < pi`` (0.5 rad = 28.6 degrees).
    s : float
        Scale, > 0.
    easy_margin : bool
    """

    margin_type = "angular"

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        m: float = 0.5,
        s: float = 64.0,
        easy_margin: bool = False,
    ) -> None:
        if not isinstance(easy_margin, bool):
            raise TypeError(f"easy_margin must be a bool, got {type(easy_margin).__name__}")
        super().__init__(embedding_dim, num_classes, m, s)
        self.easy_margin = easy_margin

    def _check_margin(self, value: float) -> float:
        m = check_real(
            value,
            "m",
            low=0.0,
            high=math.pi,
            high_open=True,
            hint=(
                f" (m is in radians; {value!r} degrees would be {math.radians(value):.4g} rad)"
                if isinstance(value, int | float) and value >= math.pi
                else ""
            ),
        )
        self._cos_m, self._sin_m = math.cos(m), math.sin(m)
        self._th = math.cos(math.pi - m)  # t + m > pi  <=>  cos t < cos(pi - m)
        self._mm = math.sin(math.pi - m) * m  # = m sin m
        return m

    def _formula(self, cos_target: torch.Tensor):
        """The one statement of the margin: ``(psi(cos), keep, sin^2, sin)`` where ``keep``
        marks where ``cos(t + m)`` applies (elsewhere the fallback or the plain cosine)."""
        sin2 = torch.rsub(cos_target * cos_target, 1.0)
        sin = sin2.clamp_min(_SIN2_EPS).sqrt()
        phi = torch.add(cos_target * self._cos_m, sin, alpha=-self._sin_m)
        if self.easy_margin:
            keep = cos_target > 0
            return torch.where(keep, phi, cos_target), keep, sin2, sin
        keep = cos_target > self._th
        return torch.where(keep, phi, cos_target - self._mm), keep, sin2, sin

    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return self._formula(cos_target)[0]

    def _target_logit_and_slope(
        self, cos_target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        value, keep, sin2, sin = self._formula(cos_target)
        # d phi / d cos = cos m + sin m cos / sin, where the clamp is inactive (autograd's
        # clamp passes the gradient where 1 - cos^2 >= eps), else cos m; 1 off the margin
        dphi = torch.where(sin2 >= _SIN2_EPS, cos_target, 0.0).div_(sin)
        dphi = dphi.mul_(self._sin_m).add_(self._cos_m)
        return value, torch.where(keep, dphi, 1.0)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", easy_margin={self.easy_margin}"


@register_head("cosface")
class CosFaceHead(MarginHead):
    r"""CosFace (large margin cosine loss): ``psi(cos t) = cos t - m``.

    Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018.

    Parameters
    ----------
    embedding_dim, num_classes : int
    m : float
        Cosine margin, >= 0.
    s : float
        Scale, > 0.
    """

    margin_type = "cosine"

    def __init__(
        self, embedding_dim: int, num_classes: int, m: float = 0.35, s: float = 64.0
    ) -> None:
        super().__init__(embedding_dim, num_classes, m, s)

    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return self._target_logit_and_slope(cos_target)[0]

    def _target_logit_and_slope(self, cos_target: torch.Tensor) -> tuple[torch.Tensor, None]:
        return cos_target - self._m, None
