"""The competition metric (samples-averaged F1) and its companions, vectorised for threshold search."""
from __future__ import annotations

import numpy as np

from .labels import LABELS


def binarize(probs: np.ndarray, thresholds=0.5) -> np.ndarray:
    """Threshold per label; a row with no label above its threshold gets its top-scoring label."""
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):  # 0/1 ints: a threshold cast to int would be 0
        probs = probs.astype(np.float32)
    pred = probs >= np.asarray(thresholds, dtype=probs.dtype)
    empty = ~pred.any(axis=1)
    if empty.any():
        pred[np.flatnonzero(empty), probs[empty].argmax(axis=1)] = True
    return pred


def _count_distributions(probs: np.ndarray) -> np.ndarray:
    """out[k, a, :] = P(a of the first k columns are true), per row, for independent Bernoulli columns (k = 0..n).

    Rows run along the last axis, so each step is a contiguous multiply-add over rows (3x faster than rows first),
    and only counts 0..k+1 can be non-zero after k columns.
    """
    rows, n = probs.shape
    p = np.ascontiguousarray(probs.T)
    out = np.zeros((n + 1, n + 1, rows))
    out[0, 0] = 1.0
    for k in range(n):
        np.multiply(out[k, :k + 2], 1 - p[k], out=out[k + 1, :k + 2])
        out[k + 1, 1:k + 2] += out[k, :k + 1] * p[k]
    return out


def _expected_f1_by_k(ranked: np.ndarray) -> np.ndarray:
    """(k, rows): each row's expected F1 if its first k columns (k = 1..n) are predicted, its labels independent with
    these probabilities. With a true labels among the first k and b among the rest, F1 = 2a / (k + a + b), averaged
    over the exact distributions of a and b, as one batched matrix product."""
    n = ranked.shape[1]
    count = np.arange(n + 1)
    b, a = count[:, None], count[None, :]
    f1 = np.stack([2 * a / np.maximum(k + a + b, 1) for k in range(1, n + 1)])  # f1[k - 1, b, a], the same for every row
    top = _count_distributions(ranked)[1:]  # top[k - 1, a]: a true labels among the first k
    rest = _count_distributions(ranked[:, ::-1])[n - 1::-1]  # rest[k - 1, b]: b true among the n - k others
    return np.einsum("kbr,kbr->kr", np.matmul(f1, top), rest)  # sum over a, then b


def expected_f1_sets(probs: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Per row, the label set with the highest expected F1 if labels were independent with these probabilities.

    That set is always some k most probable labels (Jansche 2007; Ye et al. 2012), so only k = 1..n are
    scored. No parameters are fitted, so it adds no optimism to a score. The blend search scores hundreds of
    candidates, hence the batched products.
    """
    probs = np.asarray(probs, dtype=np.float64)
    rows, n = probs.shape
    pred = np.zeros((rows, n), dtype=bool)
    for start in range(0, rows, chunk):
        p = probs[start:start + chunk]
        order = np.argsort(-p, axis=1, kind="stable")
        best_k = _expected_f1_by_k(np.take_along_axis(p, order, axis=1)).argmax(axis=0) + 1  # first (smallest) k on ties
        np.put_along_axis(pred[start:start + chunk], order, np.arange(1, n + 1) <= best_k[:, None], axis=1)
    return pred


def expected_f1(probs: np.ndarray, pred: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Each row's expected F1 of its label set `pred` (at least one label) if its labels were independent with
    these probabilities: how likely a submitted row is to be wrong, without its true labels."""
    probs, pred = np.asarray(probs, dtype=np.float64), np.asarray(pred, dtype=bool)
    out = np.empty(len(probs))
    for start in range(0, len(probs), chunk):
        p, chosen = probs[start:start + chunk], pred[start:start + chunk]
        order = np.argsort(~chosen, axis=1, kind="stable")  # the chosen labels first
        by_k = _expected_f1_by_k(np.take_along_axis(p, order, axis=1))
        out[start:start + chunk] = by_k[chosen.sum(axis=1) - 1, np.arange(len(p))]
    return out


def per_row_f1_binary(y_true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Each row's 2|T∩P| / (|T|+|P|); a row with both empty counts as 1. samples-F1 is their mean."""
    y_true = np.asarray(y_true, dtype=bool)
    tp = np.count_nonzero(y_true & pred, axis=1)
    denom = np.count_nonzero(y_true, axis=1) + np.count_nonzero(pred, axis=1)
    return np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 1.0)


def samples_f1_binary(y_true: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(per_row_f1_binary(y_true, pred)))


def samples_f1(y_true: np.ndarray, probs: np.ndarray, thresholds=0.5) -> float:
    return samples_f1_binary(y_true, binarize(probs, thresholds))


def per_row_f1(y_true: np.ndarray, probs: np.ndarray, thresholds=0.5) -> np.ndarray:
    return per_row_f1_binary(y_true, binarize(probs, thresholds))


def f1_by_threshold(truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """One label's F1 (2tp / (predicted + true)) when predicted at each of `thresholds`."""
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(probs)[:, None] >= np.asarray(thresholds)[None, :]
    tp = np.count_nonzero(pred & truth[:, None], axis=0)
    return 2 * tp / np.maximum(pred.sum(axis=0) + truth.sum(), 1)


def scores(y_true: np.ndarray, pred: np.ndarray) -> dict:
    """Samples, micro and macro F1 plus per-label precision/recall/F1/support of 0/1 predictions, as plain floats."""
    y_true, pred = np.asarray(y_true, dtype=bool), np.asarray(pred, dtype=bool)
    tp = np.count_nonzero(y_true & pred, axis=0).astype(float)
    fp = np.count_nonzero(~y_true & pred, axis=0).astype(float)
    fn = np.count_nonzero(y_true & ~pred, axis=0).astype(float)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    return {
        "samples_f1": samples_f1_binary(y_true, pred),
        "micro_f1": float(micro),
        "macro_f1": float(f1.mean()),
        "per_label": {
            str(label): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(LABELS, precision, recall, f1, y_true.sum(axis=0))
        },
    }
