"""Paired statistics for comparing variants on the same items."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def accuracy_ci(correct: Sequence[bool], level: float = 0.95, n_boot: int = 2000, seed: int = 0
                ) -> tuple[float, float, float]:
    """``(accuracy, low, high)``: a percentile bootstrap interval over items."""
    if not correct:
        return float("nan"), float("nan"), float("nan")
    return _bootstrap_mean([1.0 if c else 0.0 for c in correct], level, n_boot, seed)


def _bootstrap_mean(values: Sequence[float], level: float, n_boot: int, seed: int) -> tuple[float, float, float]:
    """``(mean, low, high)``: a percentile bootstrap interval of the mean, resampling ``values``."""
    n = len(values)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(n_boot))
    tail = (1.0 - level) / 2
    return sum(values) / n, means[int(tail * (n_boot - 1))], means[int((1 - tail) * (n_boot - 1))]


def paired_difference_ci(a: Sequence[bool], b: Sequence[bool], level: float = 0.95, n_boot: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """``(acc_a - acc_b, low, high)``: a paired bootstrap over items (same items, resampled together)."""
    if len(a) != len(b):
        raise ValueError("Paired comparison needs the same items in both runs.")
    return _bootstrap_mean([(1.0 if x else 0.0) - (1.0 if y else 0.0) for x, y in zip(a, b)], level, n_boot, seed)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """Exact McNemar test: ``(b01, b10, p)`` where ``b01`` counts items only ``b`` solved and
    ``b10`` items only ``a`` solved; ``p`` is the two-sided binomial test of
    ``min(b01, b10)`` successes in ``b01 + b10`` trials at 1/2 (``p = 1`` when no item differs)."""
    if len(a) != len(b):
        raise ValueError("McNemar's test needs the same items in both runs.")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return only_b, only_a, sign_test(only_a, only_b)


def sign_test(n_pos: int, n_neg: int) -> float:
    """Two-sided exact binomial test of ``min(n_pos, n_neg)`` in ``n_pos + n_neg`` trials at 1/2."""
    n = n_pos + n_neg
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(n_pos, n_neg) + 1)) / 2**n)


def paired_over_seeds(a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]], level: float = 0.95,
                      n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float, int, int, float]:
    """Compare two variants run with the same seeds on the same items.

    ``a[s][i]``: whether variant A, seed ``s``, solved item ``i`` (likewise ``b``). Per item,
    ``d_i = mean_s(a[s][i] - b[s][i])``; returns ``(mean_i d_i, low, high, n_pos, n_neg, p)``
    with a bootstrap interval over items (seeds stay together, so items are the independent
    unit) and an exact sign test over the items with ``d_i != 0``. With one seed this is
    exactly :func:`paired_difference_ci` and :func:`mcnemar`.
    """
    if len(a) != len(b) or any(len(x) != len(a[0]) for x in (*a, *b)):
        raise ValueError("Paired comparison needs the same seeds and items in both variants.")
    diffs = [sum((1.0 if x[i] else 0.0) - (1.0 if y[i] else 0.0) for x, y in zip(a, b)) / len(a)
             for i in range(len(a[0]))]
    n_pos, n_neg = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return (*_bootstrap_mean(diffs, level, n_boot, seed), n_pos, n_neg, sign_test(n_pos, n_neg))
