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


# ---------------------------------------------------------------- intervals and tests over seeds
def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """``(p, low, high)``: the Wilson score interval of a proportion ``p = s / n``,
    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``z`` the normal quantile at
    ``(1 + level) / 2``. Unlike the bootstrap it does not collapse to ``[0, 0]`` at ``s = 0``."""
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    from statistics import NormalDist

    z = NormalDist().inv_cdf((1 + level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    return p, low, 1.0 if successes == n else min(1.0, centre + half)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (Lentz's method)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function: ``1 - I_{df/(df+t²)}(df/2, 1/2) / 2`` for ``t >= 0``."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    low, high = -1e4, 1e4
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: ``mean ± t_{(1+level)/2, n-1} s / sqrt(n)`` (``nan`` bounds for ``n < 2``)."""
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def over_seeds(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """Compare two variants by their per-seed scores (same seeds, same items): the paired
    differences ``d_s = a_s - b_s``, their t-interval, and the exact two-sided sign test over
    the seeds with ``d_s != 0``. The seed, not the item, is the unit: training-seed variance is
    in the interval."""
    if len(a) != len(b):
        raise ValueError("The over-seed comparison needs one score per seed for both variants.")
    diffs = [x - y for x, y in zip(a, b)]
    mean, low, high = t_interval(diffs, level)
    n_pos, n_neg = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else float("nan")
    return {"seeds": len(diffs), "diffs": diffs, "mean": mean, "low": low, "high": high, "sd": sd,
            "n_pos": n_pos, "n_neg": n_neg, "sign_p": sign_test(n_pos, n_neg)}


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean paired difference a two-sided paired t-test at ``alpha`` detects
    with probability ``power`` over ``n`` pairs whose differences have standard deviation ``sd``:
    ``MDE = (t_{1-alpha/2, n-1} + t_{power, n-1}) sd / sqrt(n)`` (the usual approximation that
    ignores the non-centrality's skew)."""
    if n < 2:
        return float("inf")
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def paired_t_p(diffs: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t-test of ``mean(diffs) = 0``:
    ``t = mean / (sd / sqrt(n))``, ``p = 2 (1 - F_{n-1}(|t|))``; 1 when every difference is 0."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return 2 * (1 - t_cdf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def tost(diffs: Sequence[float], margin: float) -> dict:
    """Two one-sided t-tests of equivalence within ``±margin`` on paired differences:
    ``p_low`` of H0 ``mean <= -margin``, ``p_high`` of H0 ``mean >= margin``, each
    ``1 - F_{n-1}(t)`` with ``t = (mean ± margin) / (sd / sqrt(n))``; ``p = max(p_low, p_high)``
    (equivalent at ``alpha`` iff ``p < alpha``, iff the ``1 - 2 alpha`` t-interval lies inside
    ``±margin``), with that 90% interval."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0:
        p_low = p_high = 0.0 if abs(mean) < margin else 1.0
    else:
        p_low, p_high = 1 - t_cdf((mean + margin) / se, n - 1), 1 - t_cdf((margin - mean) / se, n - 1)
    _, low, high = t_interval(diffs, 0.90)
    return {"p": max(p_low, p_high), "p_low": p_low, "p_high": p_high, "low90": low, "high90": high,
            "margin": margin}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sort ascending, ``p_(i) * (m - i + 1)``,
    made monotone by a running maximum and capped at 1 (reject at ``alpha`` iff adjusted < ``alpha``)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, pvalues[i] * (m - rank)))
        adjusted[i] = running
    return adjusted
