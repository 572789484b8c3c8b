"""Growth curves of one ability: score against the records of that ability trained on, fitted and checked.

The curve is a logistic in log-volume between the ability's chance level and an upper plateau::

    score(n) = chance + (upper - chance) / (1 + exp(-(log(n) - midpoint) / scale)),   score(0) = chance

with ``chance <= upper <= 100``, ``scale > 0``. Why this form rather than a power law with offset: the study's (and
the quickstart's) curves are S-shaped on the log-volume axis the study draws them on (code saturates early, Chinese
cloze jumps between two volumes, math stays at chance), a logistic in log n has exactly that shape, starts at the
chance level with no data (so zero records of an ability predict chance, as they should) and cannot leave the
[chance, 100] band; a power law with offset ``upper - a * n^-b`` is concave in log n, so it cannot follow a jump,
and diverges below chance at small n. The fit minimises a soft-L1 loss (scipy's ``least_squares``, ``f_scale``
:data:`ROBUST_SCALE` points), so one outlying volume pulls the curve far less than under squared error, from
several starting midpoints (the loss is not convex in the midpoint).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from jaxtune.errors import JaxtuneError

ROBUST_SCALE = 2.0
"""Residuals (score points) beyond which the soft-L1 loss grows linearly rather than quadratically."""
MIN_SCALE = 0.05
MAX_SCALE = 5.0


@dataclass(frozen=True)
class GrowthCurve:
    """One fitted curve (scores in percent)."""

    chance: float
    upper: float
    midpoint: float
    """log(n) where the score is halfway between chance and ``upper``."""
    scale: float
    """Width of the rise in log(n) (natural log): from 27% to 73% of the way up takes 2 x scale."""

    def __call__(self, n: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """The predicted score at ``n`` records (0 gives the chance level)."""
        n = np.asarray(n, dtype=float)
        with np.errstate(divide="ignore", over="ignore"):
            z = (np.log(np.maximum(n, 1e-300)) - self.midpoint) / self.scale
            rise = np.where(n > 0, 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500))), 0.0)
        return self.chance + (self.upper - self.chance) * rise

    def to_dict(self) -> dict[str, float]:
        return {"chance": self.chance, "upper": self.upper, "midpoint_log": self.midpoint, "scale": self.scale}


class FitError(JaxtuneError, ValueError):
    """Points a curve cannot be fitted to (fewer than two volumes, or no positive volume)."""


def fit_growth(
    volumes: Sequence[float], scores: Sequence[float], chance: float, initial: GrowthCurve | None = None
) -> GrowthCurve:
    """The curve of the module docstring fitted to ``(volumes, scores)`` (volumes > 0, scores in percent); from
    ``initial``'s parameters (and one more start) when given, else from eight starts."""
    x = np.log(np.asarray(volumes, dtype=float))
    y = np.asarray(scores, dtype=float)
    if len(x) < 2 or len(set(x.tolist())) < 2:
        raise FitError(f"a growth curve needs at least two volumes, got {list(volumes)}")
    chance = float(min(max(chance, 0.0), 100.0))
    lo_mid, hi_mid = float(x.min()) - 3.0, float(x.max()) + 3.0

    def residuals(p: np.ndarray) -> np.ndarray:
        upper, mid, scale = p
        return chance + (upper - chance) / (1.0 + np.exp(np.clip(-(x - mid) / scale, -500, 500))) - y

    top = float(np.clip(max(y.max(), chance + 1e-6), chance + 1e-6, 100.0))
    if initial is not None:
        starts = [(initial.upper, initial.midpoint, initial.scale), (top, float(x.mean()), 1.0)]
    else:
        starts = [(top, m, sc) for m in np.linspace(x.min(), x.max(), 4) for sc in (0.3, 1.0)]
    best = None
    for upper0, mid0, scale0 in starts:
        start = np.clip([upper0, mid0, scale0], [chance, lo_mid, MIN_SCALE], [100.0, hi_mid, MAX_SCALE])
        r = least_squares(
            residuals,
            start,
            bounds=([chance, lo_mid, MIN_SCALE], [100.0 + 1e-9, hi_mid, MAX_SCALE]),
            loss="soft_l1",
            f_scale=ROBUST_SCALE,
        )
        if best is None or r.cost < best.cost:
            best = r
    upper, mid, scale = (float(v) for v in best.x)
    return GrowthCurve(chance, min(upper, 100.0), mid, scale)


@dataclass(frozen=True)
class Holdout:
    """The fit without the largest volume, asked to predict it."""

    volume: float
    measured: float
    predicted: float

    @property
    def error(self) -> float:
        """Predicted minus measured (score points)."""
        return self.predicted - self.measured


def holdout_check(volumes: Sequence[float], scores: Sequence[float], chance: float) -> Holdout | None:
    """Fit on every volume but the largest and predict the largest; None with fewer than three volumes."""
    order = np.argsort(np.asarray(volumes, dtype=float))
    v = np.asarray(volumes, dtype=float)[order]
    s = np.asarray(scores, dtype=float)[order]
    if len(set(v.tolist())) < 3:
        return None
    keep = v < v[-1]
    curve = fit_growth(v[keep], s[keep], chance)
    return Holdout(float(v[-1]), float(s[~keep].mean()), float(curve(v[-1])))


def volume_at_fraction(volumes: Sequence[float], scores: Sequence[float], fraction: float = 0.9) -> float | None:
    """The smallest volume whose score reaches ``fraction`` of the best score (None when the best is <= 0)."""
    best = max(scores)
    if best <= 0 or not math.isfinite(best):
        return None
    return next(v for v, s in sorted(zip(volumes, scores)) if s >= fraction * best)
