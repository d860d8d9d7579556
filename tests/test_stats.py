"""modetune.stats: McNemar's test, bootstrap intervals, paired comparisons over seeds."""

from __future__ import annotations

import pytest

from modetune.stats import accuracy_ci, mcnemar, paired_difference_ci, paired_over_seeds


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
