"""How much of a score is noise: 95% intervals of nested samples-F1 and of paired differences, by bootstrap.

samples-F1 is a mean over rows, so a score moves with the rows it was measured on. The nested score is the
mean over folds of each fold's mean (each fold scored by the tuning fitted without it), so the bootstrap
resamples rows within each fold, every fold keeping its size, and recomputes that same mean of fold means:
the resamples are centred on exactly the reported score. A difference of two series on the same rows
(a blend against a model, a run against its baseline) is resampled as the per-row difference, which keeps
the pairing: the noise both share cancels, and a series against itself gives exactly 0.

Counts, not indices: each resample is a row of multinomial counts (rows drawn with replacement, counted by
bincount), and a matrix product with the per-row values gives every series' resampled mean at once.
"""
from __future__ import annotations

import numpy as np

LEVEL = 0.95


def fold_mean(values: np.ndarray, fold_of_row: np.ndarray) -> np.ndarray:
    """The mean over folds of each fold's mean, per series (values: (series, rows) or (rows,))."""
    values = np.asarray(values, dtype=np.float64)
    return np.mean([values[..., fold_of_row == k].mean(axis=-1) for k in np.unique(fold_of_row)], axis=0)


def resample(values: np.ndarray, fold_of_row: np.ndarray, resamples: int, seed: int, chunk: int = 250) -> np.ndarray:
    """(resamples, series) fold means of `values` (series, rows) over rows drawn with replacement within each fold.

    Every series sees the same draws, so the difference of two columns is the resampled paired difference.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    rng = np.random.default_rng(seed)
    folds = np.unique(fold_of_row)
    out = np.zeros((resamples, len(values)))
    for k in folds:
        fold_values = values[:, fold_of_row == k].T  # (rows of fold k, series)
        n = len(fold_values)
        for start in range(0, resamples, chunk):
            size = min(chunk, resamples - start)
            drawn = rng.integers(0, n, (size, n)) + (np.arange(size) * n)[:, None]  # row i of resample j -> j * n + row
            counts = np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n)
            out[start:start + size] += counts.astype(np.float64) @ fold_values / n
    return out / len(folds)


def interval(draws: np.ndarray) -> tuple[float, float]:
    """The central LEVEL percentile interval of one series' resampled values."""
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def summarise(series: dict[str, np.ndarray], fold_of_row: np.ndarray, resamples: int, seed: int) -> dict[str, dict]:
    """{name: {"score", "low", "high"}} for each per-row series, all from one set of draws."""
    names = list(series)
    values = np.stack([series[name] for name in names])
    draws = resample(values, fold_of_row, resamples, seed)
    scores = fold_mean(values, fold_of_row)
    return {name: {"score": float(scores[i]), **dict(zip(("low", "high"), interval(draws[:, i])))}
            for i, name in enumerate(names)}


def text(entry: dict) -> str:
    """'0.8702 [0.8674, 0.8731]': a score with its 95% interval, as every table prints it."""
    return f"{entry['score']:.4f} [{entry['low']:.4f}, {entry['high']:.4f}]"


def signed(entry: dict) -> str:
    """'+0.0031 [+0.0012, +0.0050]': a difference with its 95% interval."""
    return f"{entry['score']:+.4f} [{entry['low']:+.4f}, {entry['high']:+.4f}]"
