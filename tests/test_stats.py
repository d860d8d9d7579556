"""modetune.utils.stats: McNemar's test, bootstrap intervals, paired comparisons over seeds."""

from __future__ import annotations

import pytest

from modetune.utils.stats import accuracy_ci, mcnemar, paired_difference_ci, paired_over_seeds


def test_mcnemar_exact_values():
    # 10 discordant pairs split 8 / 2: two-sided binomial p = 2 * P(X <= 2 | n=10, 1/2) = 112/1024
    a = [True] * 8 + [False] * 2 + [True] * 5
    b = [False] * 8 + [True] * 2 + [True] * 5
    only_b, only_a, p = mcnemar(a, b)
    assert (only_b, only_a) == (2, 8)
    assert p == pytest.approx(112 / 1024)
    assert mcnemar([True, False], [True, False])[2] == 1.0
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


def test_bootstrap_intervals():
    flags = [True] * 30 + [False] * 70
    acc, lo, hi = accuracy_ci(flags, n_boot=4000)
    assert acc == 0.3 and lo < 0.3 < hi
    assert 0.15 < hi - lo < 0.22  # about 2 * 1.96 * sqrt(0.3 * 0.7 / 100) = 0.18
    diff, dlo, dhi = paired_difference_ci(flags, flags)
    assert diff == dlo == dhi == 0.0


def test_paired_over_seeds():
    import random

    rng = random.Random(1)
    a = [rng.random() < 0.6 for _ in range(300)]
    b = [rng.random() < 0.5 for _ in range(300)]
    # one seed: exactly the paired bootstrap and McNemar
    diff, lo, hi, n_pos, n_neg, p = paired_over_seeds([a], [b])
    assert (diff, lo, hi) == paired_difference_ci(a, b)
    assert (n_neg, n_pos, p) == mcnemar(a, b)
    # three seeds on the same items: per-item means; an item counts once whatever the seeds
    a3, b3 = [a, a, [not x for x in a]], [b, b, b]
    diff3, lo3, hi3, pos3, neg3, p3 = paired_over_seeds(a3, b3)
    means = [sum(x[i] - y[i] for x, y in zip(a3, b3)) / 3 for i in range(300)]
    assert diff3 == pytest.approx(sum(means) / 300) and lo3 <= diff3 <= hi3
    assert (pos3, neg3) == (sum(m > 0 for m in means), sum(m < 0 for m in means)) and pos3 + neg3 <= 300
    with pytest.raises(ValueError):
        paired_over_seeds([a], [b, b])


def test_wilson_interval_textbook_values():
    from modetune.utils.stats import wilson_interval

    # Newcombe (1998), Table I / any textbook: 0/10 -> [0, 0.2775]; 30/100 -> [0.2189, 0.3958]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.0, 0.27753), abs=1e-5)
    assert wilson_interval(30, 100) == pytest.approx((0.3, 0.21895, 0.39585), abs=1e-5)
    assert wilson_interval(10, 10)[2] == 1.0 and wilson_interval(10, 10)[1] == pytest.approx(0.72247, abs=1e-5)


def test_t_quantiles_and_intervals_match_tables():
    from modetune.utils.stats import t_cdf, t_interval, t_quantile

    # Student's t table: t_{0.975} at 2, 7 and 30 df; t_{0.8} at 7 df
    for p, df, table in ((0.975, 2, 4.3027), (0.975, 7, 2.3646), (0.975, 30, 2.0423), (0.8, 7, 0.8960)):
        assert t_quantile(p, df) == pytest.approx(table, abs=1e-4)
        assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)
    try:  # and scipy where it is installed (it is in the dev environment)
        from scipy import stats as scipy_stats
    except ImportError:
        scipy_stats = None
    if scipy_stats is not None:
        for df in (1, 3, 9, 50):
            assert t_quantile(0.9, df) == pytest.approx(scipy_stats.t.ppf(0.9, df), rel=1e-9)
    # the example: three per-seed differences; mean ± 4.303 s / sqrt(3)
    mean, low, high = t_interval([-1.0, 0.5, -0.25])
    half = 4.302653 * 0.75 / 3 ** 0.5  # s = 0.75
    assert (mean, low, high) == pytest.approx((-0.25, -0.25 - half, -0.25 + half), abs=1e-5)


def test_over_seeds_and_minimum_detectable_effect():
    from modetune.utils.stats import minimum_detectable_effect, over_seeds

    result = over_seeds([0.52, 0.55, 0.50, 0.58], [0.50, 0.50, 0.51, 0.50])
    assert result["diffs"] == pytest.approx([0.02, 0.05, -0.01, 0.08])
    assert (result["n_pos"], result["n_neg"]) == (3, 1) and result["sign_p"] == pytest.approx(10 / 16)
    assert result["mean"] == pytest.approx(0.035) and result["low"] < 0.035 < result["high"]
    # MDE = (t_{0.975, n-1} + t_{0.8, n-1}) sd / sqrt(n): n = 8, sd = 1 -> (2.3646 + 0.8960) / sqrt(8)
    assert minimum_detectable_effect(1.0, 8) == pytest.approx((2.3646 + 0.8960) / 8 ** 0.5, abs=1e-4)
    assert minimum_detectable_effect(1.0, 32) < minimum_detectable_effect(1.0, 8) < minimum_detectable_effect(2.0, 8)
    with pytest.raises(ValueError):
        over_seeds([0.5], [0.5, 0.6])
