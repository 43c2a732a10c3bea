"""solution.stats: the fold bootstrap's intervals and paired differences behave as 95% intervals should."""
from __future__ import annotations

import numpy as np

from solution import stats

# Per-row F1 values as samples-F1 makes them: most rows exact, the rest at a few fractions (skewed, bounded).
VALUES = np.array([1.0, 2 / 3, 0.5, 0.8, 0.4, 0.0])
CHANCES = np.array([0.6, 0.15, 0.1, 0.08, 0.03, 0.04])


def rows(rng, n: int) -> np.ndarray:
    return rng.choice(VALUES, size=n, p=CHANCES)


def test_a_series_against_itself_differs_by_exactly_zero():
    rng = np.random.default_rng(0)
    a, fold = rows(rng, 500), np.arange(500) % 5
    result = stats.summarise({"a": a, "a - a": a - a}, fold, 500, seed=1)
    assert result["a - a"] == {"score": 0.0, "low": 0.0, "high": 0.0}
    assert result["a"]["low"] < result["a"]["score"] < result["a"]["high"]


def test_better_on_every_row_gives_an_interval_above_zero():
    rng = np.random.default_rng(1)
    b = rows(rng, 400) * 0.9
    a = b + rng.uniform(0.0005, 0.002, len(b))  # a beats b on every row, by a little
    result = stats.summarise({"a - b": a - b}, np.arange(400) % 4, 500, seed=2)["a - b"]
    assert 0 < result["low"] <= result["score"] <= result["high"]


def test_the_score_is_the_mean_of_fold_means():
    rng = np.random.default_rng(2)
    a, fold = rows(rng, 301), np.r_[np.zeros(100, int), np.ones(201, int)]  # unequal folds
    want = (a[:100].mean() + a[100:].mean()) / 2
    assert stats.summarise({"a": a}, fold, 200, seed=3)["a"]["score"] == want


def test_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    """400 simulated runs of 300 rows in 3 folds: the true mean falls inside between 92% and 98% of the intervals."""
    rng = np.random.default_rng(3)
    truth, fold, covered = float(VALUES @ CHANCES), np.arange(300) % 3, []
    for run in range(20):  # 20 draws of bootstrap counts, each shared by 20 independent simulated runs
        sims = {str(i): rows(rng, 300) for i in range(20)}
        for result in stats.summarise(sims, fold, 1000, seed=run).values():
            covered.append(result["low"] <= truth <= result["high"])
    assert 0.92 <= np.mean(covered) <= 0.98, np.mean(covered)
