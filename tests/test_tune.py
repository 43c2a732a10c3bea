"""solution.tune's pieces: the fast threshold search against the plain metric, calibration, and the saved tuning."""
from __future__ import annotations

import numpy as np
import pytest

from solution.errors import UserError
from solution.labels import N_LABELS
from solution.metric import samples_f1
from solution.tune import GRID, RowF1, Tuned, best_global_threshold, calibrate, fit_calibration


def case(seed: int, rows: int = 2000):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.02, 0.6, (rows, N_LABELS))  # each row's true label probabilities
    y = (rng.random((rows, N_LABELS)) < truth).astype(np.uint8)
    return y, truth, rng


def test_grid_search_matches_the_metric_at_every_threshold():
    y, truth, _ = case(0, rows=500)
    probs = truth.astype(np.float32)
    fast = RowF1(y, probs).at_grid()
    assert fast == pytest.approx([samples_f1(y, probs, t) for t in GRID], abs=1e-12)
    t, f1 = best_global_threshold(y, probs)
    assert f1 == pytest.approx(max(samples_f1(y, probs, g) for g in GRID))


def test_calibration_undoes_a_distortion():
    """Probabilities squashed and shifted on the logit scale come back close to the true ones."""
    y, truth, _ = case(1, rows=20000)
    logit = np.log(truth / (1 - truth))
    distorted = 1 / (1 + np.exp(-(0.4 * logit + 1.0)))  # over-confident on rare labels, under elsewhere
    calibration = fit_calibration(y, distorted)
    restored = calibrate(distorted, calibration)
    assert np.abs(calibration[:, 0] - 2.5).max() < 0.5  # the slope that undoes 0.4
    assert np.abs(restored - truth).mean() < 0.25 * np.abs(distorted - truth).mean()
    assert restored.sum(axis=0) == pytest.approx(y.sum(axis=0), rel=0.02)  # a logistic fit matches the label counts


def test_calibration_stays_finite_for_a_label_without_positives():
    y, truth, _ = case(2, rows=300)
    y[:, 5] = 0
    calibration = fit_calibration(y, truth)
    assert np.isfinite(calibration).all()
    assert calibrate(truth, calibration)[:, 5].max() < 0.2


def test_saved_tuning_round_trips_and_decides_alike():
    y, truth, rng = case(3, rows=400)
    tuned = Tuned(np.array([0.25, 0.75]), 0.4, rng.uniform(0.2, 0.7, N_LABELS).astype(np.float32),
                  fit_calibration(y, truth))
    record = {"models": ["a", "b"], "weights": {"a": 0.25, "b": 0.75}, **tuned.to_record()}
    again = Tuned.from_record(record)
    assert np.allclose(again.weights, tuned.weights)
    for decision in ("thresholds", "expected_f1"):
        assert (again.label_sets(truth, decision) == tuned.label_sets(truth, decision)).all()


def test_a_blend_json_from_before_calibration_asks_for_a_new_tune():
    record = {"models": ["a"], "weights": {"a": 1.0}, "global_threshold": 0.5,
              "thresholds": {str(label): 0.5 for label in range(1, 20) if label != 12}}
    with pytest.raises(UserError, match=r"oof/blend.json .*rerun ./run.sh tune"):
        Tuned.from_record(record)


def _same_tuning(a: Tuned, b: Tuned) -> bool:
    return (np.array_equal(a.weights, b.weights) and a.global_threshold == b.global_threshold
            and np.array_equal(a.thresholds, b.thresholds) and np.array_equal(a.calibration, b.calibration))


def test_nested_tuning_for_fold_k_never_reads_fold_k_labels():
    """Permuting the labels of fold k's rows leaves the weights, thresholds and calibration fitted for fold k's
    nested score unchanged, while it does change the other folds' (so the permutation is felt at all)."""
    from solution.settings import build_config
    from solution.tune import nested_tunings

    y, truth, rng = case(3, rows=450)
    stack = np.stack([np.clip(truth + rng.normal(0, s, truth.shape), 0, 1).astype(np.float32) for s in (0.1, 0.2)])
    fold_of_row = np.arange(len(y)) % 3
    cfg = build_config(["n_folds=3", "tune.trials=6", "tune.threshold_trials=3"])
    base = nested_tunings(stack, y, fold_of_row, cfg)
    for k in range(3):
        rows = np.flatnonzero(fold_of_row == k)
        permuted = y.copy()
        permuted[rows] = y[rng.permutation(rows)]
        again = nested_tunings(stack, permuted, fold_of_row, cfg)
        assert _same_tuning(again[k], base[k])
        assert not all(_same_tuning(again[j], base[j]) for j in range(3) if j != k)


# ---- the blend's weight search: models that add nothing cost nothing, models that help are used --------------------

def _evaluate(stack: np.ndarray, y: np.ndarray, *keys: str) -> dict:
    from solution.settings import build_config
    from solution.tune import evaluate

    cfg = build_config(["n_folds=3", "tune.threshold_trials=3", *keys])
    return evaluate(stack, y, np.arange(len(y)) % 3, cfg)


def _noisy(truth: np.ndarray, rng, sd: float) -> np.ndarray:
    """The true probabilities seen through independent noise on the logit: models whose errors partly cancel."""
    logit = np.log(truth / (1 - truth)) + rng.normal(0, sd, truth.shape)
    return (1 / (1 + np.exp(-logit))).astype(np.float32)


def test_duplicates_and_a_constant_model_leave_the_nested_score_of_the_model_exactly():
    """A duplicate gives the same blend (no gain), and a constant says nothing about any row: neither is taken."""
    y, truth, rng = case(4, rows=600)
    a = _noisy(truth, rng, 1.0)
    constant = np.broadcast_to(y.mean(axis=0), y.shape).astype(np.float32)
    alone = _evaluate(a[None], y)
    blend = _evaluate(np.stack([a, a, a, constant]), y)
    assert blend["tuned"].weights.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert blend["samples_f1_nested"] == alone["samples_f1_nested"]
    assert np.array_equal(blend["row_f1"], alone["row_f1"])


@pytest.mark.parametrize("search", ["greedy", "optuna"])
def test_a_blend_of_models_with_independent_errors_beats_each_of_them_nested(search):
    y, truth, rng = case(5, rows=600)
    models = [_noisy(truth, rng, 1.2) for _ in range(3)]
    best = max(_evaluate(m[None], y)["samples_f1_nested"] for m in models)
    blend = _evaluate(np.stack(models), y, f"tune.search={search}", "tune.trials=10")
    assert (blend["tuned"].weights > 0).sum() >= 2
    assert blend["samples_f1_nested"] > best + 0.005


def test_many_models_with_duplicates_noise_and_a_constant_do_not_score_below_the_best_single_model_nested():
    """Two useful models, their duplicates, a much noisier model, a constant (each label's frequency) and an all-0.5
    model: the blend keeps the gain of the useful two (the others, scored alone, are far below them)."""
    y, truth, rng = case(6, rows=600)
    a, b = _noisy(truth, rng, 1.0), _noisy(truth, rng, 1.0)
    junk = [a, b, _noisy(truth, rng, 3.0), np.broadcast_to(y.mean(axis=0), y.shape).astype(np.float32),
            np.full(y.shape, 0.5, np.float32)]
    best = max(_evaluate(m[None], y)["samples_f1_nested"] for m in (a, b))
    assert _evaluate(np.stack([a, b, *junk]), y)["samples_f1_nested"] >= best


def test_the_nested_score_is_the_fold_mean_of_the_saved_per_row_scores():
    from solution.stats import fold_mean

    y, truth, rng = case(7, rows=300)
    result = _evaluate(np.stack([_noisy(truth, rng, 1.0), _noisy(truth, rng, 1.0)]), y)
    assert abs(fold_mean(result["row_f1"], np.arange(300) % 3) - result["samples_f1_nested"]) < 1e-12
