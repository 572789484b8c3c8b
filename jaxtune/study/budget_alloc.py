"""Per-ability record counts that maximise a predicted (weighted) overall score for a fixed total.

The objective is separable: ``sum_a w_a * f_a(n_a) / sum_a w_a`` subject to ``sum_a n_a = N`` and
``0 <= n_a <= available_a``, each ``f_a`` a fitted growth curve (:mod:`jaxtune.study.growth_fit`, S-shaped in log
n, so neither concave nor convex: a greedy record-by-record allocation can stop at the foot of a rise that would pay
off later). :func:`allocate` solves it by dynamic programming over abilities: ``best_a(t)`` is the best value of
the first ``a`` abilities holding exactly ``t`` records, ``best_a(t) = max_k best_{a-1}(t - k) + w_a f_a(k)``
over the candidate counts ``k`` of ability ``a``. Every feasible allocation is the sum of one candidate per
ability, and the recursion keeps, for every prefix total, the best such partial sum, so ``best_A(N)`` is the
optimum over all allocations built from the candidates (Bellman's principle for a separable objective under one sum
constraint). The candidates are every integer 0..available when ``N <= EXACT_LIMIT`` (the optimum over all integer
allocations); above it, the multiples of ``step = ceil(N / EXACT_LIMIT)`` plus 0..step-1 and the availability
(every total stays reachable; the optimum over that grid). The optimum is that of the predicted score up to
:data:`TIE_POINTS`, which breaks ties toward the uniform allocation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from jaxtune.errors import JaxtuneError

EXACT_LIMIT = 4000
"""Totals up to this are allocated over every integer count."""
TIE_POINTS = 1e-3
"""Ties: the objective carries ``- TIE_POINTS * sum_a ((n_a - N/A) / N)^2`` (at most 0.001 points), so among
allocations whose predicted scores are equal (flat curves: an ability that stays at chance predicts the same score
at every count) the one closest to uniform wins, rather than the leftover records all going to one ability."""


class AllocationError(JaxtuneError, ValueError):
    """A total the available records cannot make up, or a bad weight."""


def candidate_counts(cap: int, total: int, floor: int = 0) -> np.ndarray:
    """The counts one ability may take (see the module docstring), ascending, from ``floor`` up to ``cap``."""
    step = 1 if total <= EXACT_LIMIT else math.ceil(total / EXACT_LIMIT)
    counts = set(range(0, min(step, cap + 1))) | set(range(0, cap + 1, step)) | {cap}
    floor = min(floor, cap)
    return np.array(sorted({floor} | {k for k in counts if k >= floor}), dtype=int)


def allocate(
    curves: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    total: int,
    available: Mapping[str, int] | None = None,
    weights: Mapping[str, float] | None = None,
    floors: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Counts per ability (keys of ``curves``) summing to ``total`` that maximise the weighted mean predicted score;
    ``available`` caps each ability (default: no cap), ``floors`` are the least each takes (default 0, never above
    its cap), ``weights`` default to 1. Ties (see :data:`TIE_POINTS`) go to the allocation closest to uniform."""
    names = list(curves)
    available = dict(available or {})
    weights = dict(weights or {})
    if total < 0:
        raise AllocationError(f"the total must be non-negative, got {total}")
    caps = {a: min(int(available.get(a, total)), total) for a in names}
    if sum(caps.values()) < total:
        raise AllocationError(f"the total {total} exceeds the records available ({sum(caps.values())}: {caps})")
    best = np.full(total + 1, -np.inf)
    best[0] = 0.0
    choices = []
    for a in names:
        ks = candidate_counts(caps[a], total, int((floors or {}).get(a, 0)))
        values = float(weights.get(a, 1.0)) * np.asarray(curves[a](ks), dtype=float)
        values -= TIE_POINTS * ((ks - total / len(names)) / max(total, 1)) ** 2
        new = np.full(total + 1, -np.inf)
        arg = np.zeros(total + 1, dtype=int)
        for k, v in zip(ks.tolist(), values.tolist()):
            shifted = np.full(total + 1, -np.inf)
            shifted[k:] = best[: total + 1 - k] + v
            better = shifted > new
            new[better] = shifted[better]
            arg[better] = k
        choices.append(arg)
        best = new
    if not np.isfinite(best[total]):
        raise AllocationError(f"no allocation of the candidates makes up exactly {total} records")
    counts: dict[str, int] = {}
    t = total
    for a, arg in zip(reversed(names), reversed(choices)):
        counts[a] = int(arg[t])
        t -= counts[a]
    return {a: counts[a] for a in names}


def weighted_mean(scores: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """The weighted overall score (plain mean with no weights)."""
    weights = weights or {}
    w = {a: float(weights.get(a, 1.0)) for a in scores}
    return sum(w[a] * scores[a] for a in scores) / sum(w.values())


def parse_weights(text: str | None, abilities: list[str]) -> dict[str, float]:
    """``code=2,math=0.5`` -> weights (unnamed abilities keep 1); names must be abilities of the grid."""
    weights: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in abilities:
            raise AllocationError(f"--weights: {part!r} is not ability=weight with an ability of {abilities}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise AllocationError(f"--weights: the weight of {name!r} is not a number: {value!r}") from None
        if weights[name] < 0:
            raise AllocationError(f"--weights: the weight of {name!r} is negative")
    if weights and sum(weights.get(a, 1.0) for a in abilities) <= 0:
        raise AllocationError("--weights: every weight is zero")
    return weights


STUDY_RULE: dict[str, int] = {
    "ethics": 64,
    "role_play": 64,
    "creative_writing": 1000,
    "biology": 1305,
    "chinese": 1306,
}
"""The study's ``reconstruct`` counts (10k in all); abilities not named take :data:`STUDY_RULE_OTHERS` (biology took
its whole file, about 1,305 records)."""
STUDY_RULE_OTHERS = 1305


def scaled_rule(abilities: list[str], total: int, available: Mapping[str, int] | None = None) -> dict[str, int]:
    """The study's ``reconstruct`` proportions scaled to ``total`` (largest remainders), within availability: what
    an ability cannot hold is dealt to the others in proportion."""
    available = dict(available or {})
    share = {a: float(STUDY_RULE.get(a, STUDY_RULE_OTHERS)) for a in abilities}
    counts = {a: 0 for a in abilities}
    left, open_ = total, [a for a in abilities]
    while left > 0 and open_:
        weight = sum(share[a] for a in open_)
        raw = {a: left * share[a] / weight for a in open_}
        take = {a: int(math.floor(raw[a])) for a in open_}
        for a in sorted(open_, key=lambda a: raw[a] - take[a], reverse=True)[: left - sum(take.values())]:
            take[a] += 1
        for a in open_:
            room = available.get(a, total) - counts[a]
            counts[a] += min(take[a], room)
        left = total - sum(counts.values())
        open_ = [a for a in open_ if counts[a] < available.get(a, total)]
    if left > 0:
        raise AllocationError(f"the total {total} exceeds the records available ({sum(counts.values())})")
    return counts
