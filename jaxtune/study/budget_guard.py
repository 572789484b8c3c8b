"""How far ``jaxtune budget`` trusts its curves: per-ability caps on extrapolation, and the guard that keeps the uniform
allocation when the fit promises no measurable gain over it.

**Extrapolation cap.** A growth curve fitted to an ability's points says nothing reliable far beyond its largest
volume (the quickstart's budget from curated-10..160, 1 to 16 records per ability, once gave Chinese cloze 588 of
640 records, 37x its largest point, predicted 38.1 overall and measured 27.5 against 58.5 for uniform
curated-640). So each ability's count is capped at :data:`CAP_MULTIPLE` (4: one step of the study's log-4 volume
axis) x its largest fitted volume, unless its curve is *saturated*: it rose (``upper - chance`` at least
:data:`RISE` points) and already at the second-largest volume the fit is :data:`SATURATED` of the way to its
plateau, so the plateau was observed over two volumes rather than assumed from a last point (a fit whose top point
is its largest volume can always put the plateau there), extrapolating it predicts no further gain, and moving
records to it is harmless. The multiple is the distance the hold-out check measures (fit without the largest
volume, predict it: one step of 4x), so the fit is asked no further than its error was measured. When the caps (with the records available) cannot make up the total, every cap is multiplied
by :data:`CAP_MULTIPLE` again until they can; ``caps`` in ``budget.json`` records the caps used (null: uncapped).

**Floor.** Below its smallest fitted volume a curve is extrapolation too, and the wrong way: it falls to the chance
level at 0 records, but an ability trained on no records scores far below chance (the model never learns its
answer format). In that quickstart budget run the five abilities given 0 records, predicted at chance (25.0, 21.9,
50.0, 25.0, 33.0), scored 2.5, 0, 0, 0 and 0: -15.2 overall points against the prediction; Chinese cloze at 588
records scored 100 against the 7.8 of its flat fit (+9.2); code and creative writing at 17 and 8 records fell 30
and 32.5 points short of their curves in a mixture that was 92% Chinese (-6.2); role-play and math moved +1.6:
38.1 predicted, 27.5 measured. So each ability takes at least its smallest fitted volume (rounded up;
:func:`extrapolation_floors`), lowered evenly when those cannot fit in the total.

**The guard.** The curves are separable (an ability's score depends on its own records only) and were measured in
uniform mixtures, so what the rest of a skewed mixture does to an ability (the -6.2 above) is outside them; even
within the trusted range a small predicted gain is not worth leaving the measured uniform run for. The optimum is
predicted with a band (bootstrap over test items); so is the *uniform* allocation of the same total
(:func:`uniform_counts`: ``total // A`` each, the remainder one each to the first abilities in order, within
availability; ``curated-N``'s counts when ``A`` divides ``N``). The optimised counts are chosen only when their
predicted gain over uniform is

- at least :data:`MIN_GAIN` points,
- clear of the bootstrap: the 5th percentile of the *paired* gain (each replicate's curves evaluated at both
  allocations) is above 0, and
- larger than the hold-out's overall error (``|overall_predicted - overall_measured|`` when the fits without the
  largest run predicted it),

each checked when its input exists; otherwise the uniform counts are kept. ``budget.json`` says which
(``chosen: uniform | optimised``, with ``decision`` the reason) and holds both predictions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jaxtune.study.growth_fit import GrowthCurve

CAP_MULTIPLE = 4
"""An ability's count is capped at this multiple of its largest fitted volume (unless saturated)."""
RISE = 5.0
"""Points above chance a curve's plateau must reach to count as having risen (and so possibly saturated)."""
SATURATED = 0.9
"""A risen curve is saturated when its fit at the second-largest volume is this fraction of the way to its
plateau."""
MIN_GAIN = 0.5
"""Predicted overall points the optimum must gain over uniform to be chosen at all."""


def is_saturated(curve: GrowthCurve, volumes: Sequence[float]) -> bool:
    """Whether ``curve`` (fitted to ``volumes``) rose and reached :data:`SATURATED` of its plateau by the
    second-largest volume."""
    rise = curve.upper - curve.chance
    distinct = sorted(set(volumes))
    if rise < RISE or len(distinct) < 2:
        return False
    return float(curve(distinct[-2])) - curve.chance >= SATURATED * rise


def extrapolation_caps(
    volumes: Mapping[str, Sequence[float]],
    fits: Mapping[str, GrowthCurve],
    total: int,
    available: Mapping[str, int] | None = None,
) -> dict[str, int | None]:
    """Per ability (keys of ``volumes``, its fitted volumes) the cap of the module docstring (None: saturated,
    uncapped), grown until the caps and the available records can make up ``total``."""
    available = dict(available or {})
    saturated = {a: is_saturated(fits[a], v) for a, v in volumes.items()}
    multiple = CAP_MULTIPLE
    while True:
        caps = {a: None if saturated[a] else max(1, int(multiple * max(v))) for a, v in volumes.items()}
        room = sum(min(total, available.get(a, total), total if c is None else c) for a, c in caps.items())
        if room >= min(total, sum(available.get(a, total) for a in volumes)) or multiple > total:
            return caps
        multiple *= CAP_MULTIPLE


def extrapolation_floors(
    volumes: Mapping[str, Sequence[float]], total: int, available: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Per ability the floor of the module docstring: its smallest fitted volume rounded up, within ``available``;
    all lowered to the largest common floor that fits when they sum past ``total``."""
    floors = {a: min(math.ceil(min(v)), int((available or {}).get(a, total))) for a, v in volumes.items()}
    if sum(floors.values()) > total:
        even = total // max(len(floors), 1)
        floors = {a: min(f, even) for a, f in floors.items()}
    return floors


def uniform_counts(names: Sequence[str], total: int, available: Mapping[str, int] | None = None) -> dict[str, int]:
    """The most even counts summing to ``total`` within ``available``: the highest common level ``L`` with
    ``sum(min(available, L)) <= total``, then one more each to the first abilities in order that have room."""
    cap = {a: int((available or {}).get(a, total)) for a in names}
    lo, hi = 0, total
    while lo < hi:  # the largest level that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if sum(min(c, mid) for c in cap.values()) <= total else (lo, mid - 1)
    counts = {a: min(cap[a], lo) for a in names}
    left = total - sum(counts.values())
    for a in names:
        if left and counts[a] < cap[a]:
            counts[a] += 1
            left -= 1
    return counts


@dataclass
class Decision:
    """Which allocation ``budget`` keeps, and why."""

    chosen: str
    """``optimised`` or ``uniform``."""
    reason: str
    gain: float
    gain_band: list[float] | None


def guard(
    optimised: float,
    uniform: float,
    paired_gains: Sequence[float],
    holdout_error: float | None,
    band: tuple[float, float],
) -> Decision:
    """The rule of the module docstring: ``optimised`` / ``uniform`` are the predicted overall scores,
    ``paired_gains`` the bootstrap replicates' gains (empty without per-item results), ``holdout_error`` the
    hold-out's overall error (None without one)."""
    gain = optimised - uniform
    gain_band = [float(np.percentile(paired_gains, q)) for q in band] if len(paired_gains) else None
    reasons = []
    if gain < MIN_GAIN:
        reasons.append(f"predicted gain {gain:+.1f} is under {MIN_GAIN:g} point")
    if gain_band is not None and gain_band[0] <= 0:
        reasons.append(f"the bootstrap's paired gain [{gain_band[0]:+.1f}, {gain_band[1]:+.1f}] is not clear of 0")
    if holdout_error is not None and gain <= abs(holdout_error):
        reasons.append(f"gain {gain:+.1f} is within the hold-out's overall error ({abs(holdout_error):.1f})")
    if reasons:
        return Decision("uniform", "kept uniform: " + "; ".join(reasons), gain, gain_band)
    checked = ["bootstrap" if gain_band is not None else "", "hold-out" if holdout_error is not None else ""]
    checks = " and ".join(c for c in checked if c) or "nothing (no items, no hold-out)"
    return Decision("optimised", f"optimised: gain {gain:+.1f} clears {checks}", gain, gain_band)
