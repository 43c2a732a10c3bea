"""Stage 3: blend weights, per-label thresholds and calibration on OOF, and the honest nested-CV score.

Two decisions turn blended probabilities into label sets (tune.decision): per-label thresholds found by
Optuna, or per image the set with the highest expected F1 after per-label Platt calibration. Blend weights
are searched (tune.search) with each candidate blend scored under that decision.
In-sample tuning fits weights, thresholds and calibration on all OOF rows and scores them on the same
rows, which is optimistic. The nested score fits them on the other folds' OOF, applies them to fold k,
and averages over folds: nothing is ever scored on a row it was fitted on. Each row's nested F1 is kept
(blend.npz), so report and compare can say how much of a score, or of a difference, is row noise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import optuna
from scipy.special import expit

from . import log
from .artefacts import save_arrays, write_json
from .config import DECISIONS, Config
from .data import Competition
from .errors import UserError
from .folds import folds_hash, read_folds
from .labels import LABELS, N_LABELS
from .metric import binarize, expected_f1_sets, per_row_f1_binary, samples_f1, samples_f1_binary
from .oof import changed_folds, collect_oof, oof_contents, settings_hash
from .variants import modality_groups

GRID = np.round(np.arange(0.02, 0.96, 0.01), 2)


@dataclass
class Tuned:
    weights: np.ndarray  # one per model, summing to 1
    global_threshold: float
    thresholds: np.ndarray  # one per label
    calibration: np.ndarray  # (labels, 2): Platt slope and intercept on the logit
    search_seconds: float = 0.0  # CPU seconds of the weight search (wall time depends on what else the machine runs)

    def label_sets(self, probs: np.ndarray, decision: str) -> np.ndarray:
        """0/1 predictions of blended probabilities under either decision (at least one label per row)."""
        if decision == "thresholds":
            return binarize(probs, self.thresholds)
        return expected_f1_sets(calibrate(probs, self.calibration))

    def to_record(self) -> dict:
        """Full precision (JSON floats round-trip exactly): submit, predict and report decide as tune scored."""
        return {"global_threshold": self.global_threshold,
                "thresholds": {str(label): float(t) for label, t in zip(LABELS, self.thresholds)},
                "calibration": {str(label): [float(v) for v in ab] for label, ab in zip(LABELS, self.calibration)}}

    @classmethod
    def from_record(cls, record: dict) -> "Tuned":
        """The tuning saved in blend.json (weights in record["models"] order; one model when it has none)."""
        if "calibration" not in record:
            raise UserError("oof/blend.json was written by an older version (no calibration); rerun ./run.sh tune")
        weights = np.array([record["weights"][m] for m in record["models"]]) if "models" in record else np.ones(1)
        thresholds = np.array([record["thresholds"][str(label)] for label in LABELS], dtype=np.float32)
        calibration = np.array([record["calibration"][str(label)] for label in LABELS])
        return cls(weights, record["global_threshold"], thresholds, calibration)


def _logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_calibration(y: np.ndarray, probs: np.ndarray, steps: int = 30, ridge: float = 1.0, tol: float = 1e-12) -> np.ndarray:
    """Per label, Platt scaling: the logistic fit of y on logit(p), by Newton's method on all labels at once.

    The expected-F1 decision reads probabilities literally, so it needs them calibrated: pos_weight inflates
    rare labels and a regularised TF-IDF model is under-confident. A small ridge pulls each slope towards 1
    and the intercept towards 0, which keeps a label without positives finite. Newton converges in about 6
    steps; it stops once no parameter moves by more than `tol` (the blend search fits hundreds of these).
    """
    z, y = _logit(probs).T.copy(), np.asarray(y, dtype=np.float64).T.copy()  # a label's rows contiguous: fast sums
    zz = z * z
    slope, bias = np.ones(len(z)), np.zeros(len(z))
    for _ in range(steps):
        s = expit(slope[:, None] * z + bias[:, None])
        r, w = s - y, s * (1 - s)
        g_a, g_b = np.einsum("ij,ij->i", r, z) + ridge * (slope - 1), r.sum(1) + 1e-3 * ridge * bias
        h_aa, h_ab, h_bb = np.einsum("ij,ij->i", w, zz) + ridge, np.einsum("ij,ij->i", w, z), w.sum(1) + 1e-3 * ridge
        det = h_aa * h_bb - h_ab ** 2
        d_slope, d_bias = (h_bb * g_a - h_ab * g_b) / det, (h_aa * g_b - h_ab * g_a) / det
        slope, bias = slope - d_slope, bias - d_bias
        if max(np.abs(d_slope).max(), np.abs(d_bias).max()) <= tol:
            break
    return np.stack([slope, bias], axis=1)


def calibrate(probs: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    return expit(_logit(probs) * calibration[:, 0] + calibration[:, 1])


def rank_transform(oof: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label, each probability -> the share of OOF probabilities at or below it (test uses the OOF scale)."""
    out_oof, out_test = np.empty_like(oof), np.empty_like(test)
    for j in range(oof.shape[1]):
        ref = np.sort(oof[:, j])
        out_oof[:, j] = np.searchsorted(ref, oof[:, j], side="right") / len(ref)
        out_test[:, j] = np.searchsorted(ref, test[:, j], side="right") / len(ref)
    return out_oof, out_test


def combine(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """stack: (models, rows, labels) -> weighted mean (rows, labels)."""
    return np.tensordot(weights / weights.sum(), stack, axes=1).astype(np.float32)


def _reach(grid: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """How many of the sorted grid's values each probability reaches (probs >= grid[i] exactly when i < reach).

    np.searchsorted(grid, probs, side="right"), as a branch-free binary search over the grid padded to a power
    of two: one vectorised step per halving, about twice as fast on many probabilities.
    """
    size = 1 << (len(grid) - 1).bit_length()
    padded = np.full(size, np.inf, dtype=grid.dtype)
    padded[:len(grid)] = grid
    reach = np.zeros(probs.shape, dtype=np.intp)
    step = size // 2
    while step:
        reach += step * (probs >= padded[reach + (step - 1)])
        step //= 2
    return reach


class RowF1:
    """samples-F1 of one (y, probs) pair from per-row counts, by table look-up, for fast threshold search.

    A row's F1 depends only on its number of true labels, true positives and predicted labels, and on
    whether its top-scoring label is true (what metric.binarize predicts for a row with nothing above
    threshold), so every value samples_f1 can average is tabulated once with samples_f1's own formula.
    """

    def __init__(self, y: np.ndarray, probs: np.ndarray):
        self.y, self.probs = np.asarray(y, dtype=bool), probs
        self.side = probs.shape[1] + 1  # counts run 0..labels
        true, tp, n = np.meshgrid(*[np.arange(self.side)] * 3, indexing="ij")
        f1 = lambda tp, n: np.where(true + n > 0, 2.0 * tp / np.maximum(true + n, 1), 1.0)  # noqa: E731
        self.table = np.stack([np.where(n == 0, f1(np.full_like(tp, hit), 1), f1(tp, n)) for hit in (0, 1)]).ravel()
        self.n_true = self.y.sum(axis=1)
        top_hit = self.y[np.arange(len(probs)), probs.argmax(axis=1)]
        self.row = (top_hit * self.side + self.n_true) * self.side ** 2  # index of the row's (hit, true) block

    def mean(self, tp: np.ndarray, n_pred: np.ndarray) -> np.ndarray:
        """samples-F1 from per-row true positives and predicted counts (rows on the last axis)."""
        return self.table[self.row + tp * self.side + n_pred].mean(axis=-1)

    def at_grid(self) -> np.ndarray:
        """samples-F1 at every GRID threshold (one threshold for all labels), in one pass.

        Each probability is binned by how many GRID thresholds it reaches; a row's predicted and true-positive
        counts at grid[i] are its labels minus the cumulative bin counts up to i, kept as one packed integer.
        """
        rows, width = len(self.probs), len(GRID) + 1
        reach = _reach(GRID.astype(self.probs.dtype), self.probs)  # samples_f1 compares in probs' dtype
        flat = (reach * rows + np.arange(rows)[:, None]).ravel()  # bins laid out (width, rows)
        bins = np.bincount(flat, minlength=width * rows) + self.side * np.bincount(flat[self.y.ravel()],
                                                                                   minlength=width * rows)
        below = np.cumsum(bins.reshape(width, rows)[:-1], axis=0)  # missed labels + side * missed true labels
        full = self.n_true * self.side + (self.side - 1)  # tp * side + n_pred when every label is predicted
        return self.table[self.row + full - below].mean(axis=1)


def best_global_threshold(y: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """The GRID threshold with the best samples-F1 (the first on ties)."""
    f1 = RowF1(y, probs).at_grid()
    i = int(np.argmax(f1))
    return float(GRID[i]), float(f1[i])


def _sampler(seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)


def candidate_score(decision: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """samples-F1 of blended probabilities under `decision`, its parameters fitted on the same rows: what the weight
    search maximises. expected_f1 is scored exactly (Platt calibration fitted, then each row's best set); thresholds
    at the candidate's best global threshold, as per-label thresholds would cost 450 Optuna trials a candidate
    (they are fitted once, on the chosen blend)."""
    if decision == "thresholds":
        return lambda y, probs: best_global_threshold(y, probs)[1]
    return lambda y, probs: samples_f1_binary(y, expected_f1_sets(calibrate(probs, fit_calibration(y, probs))))


def search_weights(stack: np.ndarray, y: np.ndarray, cfg: Config) -> np.ndarray:
    """Non-negative model weights summing to 1, by tune.search; optuna_global scores at the global threshold
    whatever tune.decision is (the search before issue 14), the others under tune.decision."""
    n = stack.shape[0]
    if n == 1:
        return np.ones(1)
    score = candidate_score("thresholds" if cfg.tune.search == "optuna_global" else cfg.tune.decision)
    exact = stack.astype(np.float64)  # combine() would cast the stack for every candidate; the cast is exact

    def blend_score(w: np.ndarray) -> float:
        return score(y, combine(exact, w))

    if cfg.tune.search == "greedy":
        varies = [m for m in range(n) if np.ptp(stack[m], axis=0).any()]
        return greedy_weights(blend_score, n, cfg.tune.steps, varies)
    return optuna_weights(blend_score, n, cfg.tune.trials, cfg.seed)


def greedy_weights(blend_score: Callable[[np.ndarray], float], n: int, steps: int, addable: list[int]) -> np.ndarray:
    """Forward selection with replacement (Caruana et al. 2004), under the decision's in-sample samples-F1.

    Start from the best single model; at step s = 2..steps, mix 1/s of the `addable` model that raises the score
    most into the blend, or leave the blend as it is when none does (the next step tries a smaller share). Each step
    costs one candidate per model, so the search grows linearly with the model count, and it has few degrees of
    freedom to fit the OOF rows with. A duplicate of a model in the blend gives the same blend (no gain) and is
    never taken. A constant model (the same probabilities on every row) is not addable: it says nothing about any
    row, and mixing it in only reshapes each label's probability scale, which is what the decision's calibration
    is fitted for (trying it would fit that reshaping to the OOF rows).
    """
    add = np.eye(n)
    singles = [blend_score(add[m]) for m in range(n)]
    best = int(np.argmax(singles))  # the first model on ties
    weights, score = add[best], singles[best]
    for s in range(2, steps + 1):
        mixed = {m: (1 - 1 / s) * weights + add[m] / s for m in addable}
        scores = {m: blend_score(w) for m, w in mixed.items()}
        m = max(scores, key=scores.get, default=None)  # the first model on ties
        if m is not None and scores[m] > score:
            weights, score = mixed[m], scores[m]
    return weights / weights.sum()


def optuna_weights(blend_score: Callable[[np.ndarray], float], n: int, trials: int, seed: int) -> np.ndarray:
    """Optuna TPE over weights in [0, 1] (normalised), from the plain mean."""
    study = optuna.create_study(direction="maximize", sampler=_sampler(seed))
    study.enqueue_trial({f"w{m}": 1.0 for m in range(n)})  # the plain mean is always a candidate

    def objective(trial):
        w = np.array([trial.suggest_float(f"w{m}", 0.0, 1.0) for m in range(n)])
        return blend_score(w) if w.sum() > 0 else 0.0

    study.optimize(objective, n_trials=trials)
    w = np.array([study.best_params[f"w{m}"] for m in range(n)])
    return w / w.sum()


def tune_thresholds(y: np.ndarray, probs: np.ndarray, trials: int, seed: int, start: float) -> np.ndarray:
    """Per-label thresholds by Optuna, one label at a time with the others held, from the global best.

    A label's threshold is kept only if it raises samples-F1, so the result never scores below `start`.
    Each trial re-counts only label j's column: the other labels' per-row counts are fixed while j is searched.
    """
    thresholds = np.full(N_LABELS, start, dtype=np.float32)
    best = samples_f1(y, probs, thresholds)
    f1 = RowF1(y, probs)
    for j in range(N_LABELS):
        pred = probs >= thresholds.astype(probs.dtype)
        pred[:, j] = False
        n_rest, tp_rest = pred.sum(axis=1), (pred & f1.y).sum(axis=1)
        study = optuna.create_study(direction="maximize", sampler=_sampler(seed + j))
        study.enqueue_trial({"t": float(start)})

        def objective(trial, j=j, n_rest=n_rest, tp_rest=tp_rest):
            t = np.float32(trial.suggest_float("t", 0.02, 0.95)).astype(probs.dtype)  # as stored in thresholds
            hit = probs[:, j] >= t
            return float(f1.mean(tp_rest + (hit & f1.y[:, j]), n_rest + hit))

        study.optimize(objective, n_trials=trials)
        if study.best_value > best:
            best, thresholds[j] = study.best_value, study.best_params["t"]
    return thresholds


def fit_tuning(stack: np.ndarray, y: np.ndarray, cfg: Config) -> Tuned:
    start = time.process_time()
    weights = search_weights(stack, y, cfg)
    searched = time.process_time() - start
    blend = combine(stack, weights)
    t0, _ = best_global_threshold(y, blend)
    return Tuned(weights, t0, tune_thresholds(y, blend, cfg.tune.threshold_trials, cfg.seed, t0), fit_calibration(y, blend),
                 searched)


def nested_tunings(stack: np.ndarray, y: np.ndarray, fold_of_row: np.ndarray, cfg: Config) -> list[Tuned]:
    """For each fold k, weights, thresholds and calibration fitted on the other folds' OOF rows only."""
    return [fit_tuning(stack[:, fold_of_row != k], y[fold_of_row != k], cfg) for k in range(cfg.n_folds)]


def evaluate(stack: np.ndarray, y: np.ndarray, fold_of_row: np.ndarray, cfg: Config) -> dict:
    """At-0.5, in-sample tuned and nested scores of one blend (a single model is a blend of one).

    samples_f1_tuned/nested follow tune.decision; by_decision has both decisions' scores side by side. row_f1 is
    each row's nested F1 under tune.decision (scored by the tuning fitted without its fold): what intervals resample;
    row_pred is the label set that scored it (what the report's error gallery shows).
    """
    decision = cfg.tune.decision
    tuned = fit_tuning(stack, y, cfg)
    blend = combine(stack, tuned.weights)
    plain = combine(stack, np.ones(len(stack)))
    in_sample = {d: tuned.label_sets(blend, d) for d in DECISIONS}
    per_fold, row_f1, row_pred, searched = [], np.empty(len(y)), np.zeros(y.shape, dtype=bool), tuned.search_seconds
    for k, inner in enumerate(nested_tunings(stack, y, fold_of_row, cfg)):
        held = fold_of_row == k
        held_blend = combine(stack[:, held], inner.weights)
        sets = {d: inner.label_sets(held_blend, d) for d in DECISIONS}
        rows = {d: per_row_f1_binary(y[held], s) for d, s in sets.items()}
        row_f1[held], row_pred[held], searched = rows[decision], sets[decision], searched + inner.search_seconds
        nested = {d: float(np.mean(r)) for d, r in rows.items()}
        per_fold.append({"fold": k, "samples_f1_at_0.5": samples_f1(y[held], plain[held]),
                         "samples_f1_tuned": samples_f1_binary(y[held], in_sample[decision][held]),
                         "samples_f1_nested": nested[decision], "nested_by_decision": nested,
                         "weights": inner.weights.round(4).tolist()})
    by_decision = {d: {"samples_f1_tuned": samples_f1_binary(y, in_sample[d]),
                       "samples_f1_nested": float(np.mean([f["nested_by_decision"][d] for f in per_fold]))}
                   for d in DECISIONS}
    return {
        "samples_f1_at_0.5": samples_f1(y, plain),
        "samples_f1_global": samples_f1(y, blend, tuned.global_threshold),
        **by_decision[decision], "by_decision": by_decision, "decision": decision,
        "tuned": tuned, "per_fold": per_fold, "row_f1": row_f1, "row_pred": row_pred, "search_seconds": searched,
    }


def blend_models(cfg: Config) -> list[str]:
    return cfg.tune.models or [m for m in cfg.models]


def load_models(cfg: Config, comp: Competition, models: list[str]) -> tuple[dict, dict, dict]:
    """Each model's OOF and test probabilities on the tune.blend scale, and its OOF files' content hashes."""
    oofs, tests, contents = {}, {}, {}
    for model in models:
        oofs[model], tests[model], metas = collect_oof(cfg, comp, model)
        contents[model] = [meta["content"] for meta in metas]
        if cfg.tune.blend == "rank":
            oofs[model], tests[model] = rank_transform(oofs[model], tests[model])
    return oofs, tests, contents


def tune(cfg: Config, comp: Competition) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    models = blend_models(cfg)
    fold_of_row = read_folds(cfg, comp)
    oofs, tests, contents = load_models(cfg, comp, models)
    start = time.time()
    results = {}
    for model in models:
        results[model] = evaluate(oofs[model][None], comp.y, fold_of_row, cfg)
        log.info(f"tune {model}: samples-F1 at 0.5 {results[model]['samples_f1_at_0.5']:.4f}  "
                 f"tuned {results[model]['samples_f1_tuned']:.4f}  nested {results[model]['samples_f1_nested']:.4f}  "
                 f"({_decisions(results[model])})")
    stack = np.stack([oofs[m] for m in models])
    blend = evaluate(stack, comp.y, fold_of_row, cfg)
    seconds = time.time() - start
    tuned: Tuned = blend["tuned"]
    weights = dict(zip(models, tuned.weights.tolist()))  # full precision: predict must blend exactly as submit
    log.info(f"tune blend ({cfg.tune.blend}) of {', '.join(models)}: weights "
             f"{ {m: round(w, 4) for m, w in weights.items()} }")
    log.info(f"tune blend: samples-F1 at 0.5 {blend['samples_f1_at_0.5']:.4f}  global threshold "
             f"{tuned.global_threshold:.2f} -> {blend['samples_f1_global']:.4f}  {cfg.tune.decision} "
             f"{blend['samples_f1_tuned']:.4f} (in-sample)  nested {blend['samples_f1_nested']:.4f} "
             f"(expected leaderboard score)  [{seconds:.1f}s; weights searched ({cfg.tune.search}) in "
             f"{blend['search_seconds']:.1f} CPU s over {cfg.n_folds + 1} fits]")
    log.info(f"tune blend: {_decisions(blend)}")
    members, groups = modality_groups(cfg, models), {}
    for group, names in members.items():  # what a second backbone adds to the first
        groups[group] = evaluate(np.stack([oofs[m] for m in names]), comp.y, fold_of_row, cfg)
        log.info(f"tune blend of the {group} ({', '.join(names)}): nested {groups[group]['samples_f1_nested']:.4f}")
    record = {
        "blend": cfg.tune.blend, "decision": cfg.tune.decision, "search": cfg.tune.search, "models": models,
        "weights": weights,
        **tuned.to_record(),
        "f1": {k: blend[k] for k in ("samples_f1_at_0.5", "samples_f1_global", "samples_f1_tuned", "samples_f1_nested")},
        "by_decision": blend["by_decision"], "per_fold": blend["per_fold"],
        "per_model": {m: {**{k: v for k, v in r.items() if k not in ("tuned", "row_f1", "row_pred")}, **r["tuned"].to_record()}
                      for m, r in results.items()},
        "n_folds": cfg.n_folds, "provenance": _blend_provenance(cfg, comp, models, contents), "seconds": seconds,
        "search_seconds": blend["search_seconds"],
        "groups": {group: {"models": members[group], "samples_f1_nested": r["samples_f1_nested"],
                           "weights": dict(zip(members[group], r["tuned"].weights.tolist()))}
                   for group, r in groups.items()},
    }
    final_oof = combine(stack, tuned.weights)
    final_test = combine(np.stack([tests[m] for m in models]), tuned.weights)
    # nested_f1: each row's nested F1 of every model (record["models"] order), then of the blend, then of each
    # group's blend (record["groups"] order); fold: its fold. report and compare resample them for intervals.
    # nested_pred: the blend's label set behind each row's nested F1 (report.html's error gallery).
    save_arrays(cfg.out / "oof" / "blend.npz", record["provenance"], oof_ids=comp.train["ImageID"].to_numpy(dtype=str),
                oof=final_oof, test_ids=comp.test["ImageID"].to_numpy(dtype=str), test=final_test,
                nested_f1=np.stack([*(results[m]["row_f1"] for m in models), blend["row_f1"],
                                    *(r["row_f1"] for r in groups.values())]), fold=fold_of_row,
                nested_pred=blend["row_pred"])
    write_json(cfg.out / "oof" / "blend.json", record)
    return record


def _decisions(result: dict) -> str:
    return "  ".join(f"{d}: in-sample {r['samples_f1_tuned']:.4f} nested {r['samples_f1_nested']:.4f}"
                     for d, r in result["by_decision"].items())


def _blend_provenance(cfg: Config, comp: Competition, models: list[str], contents: dict[str, list]) -> dict:
    """Data, folds, each model's settings and the content hash of every OOF file the blend was tuned on."""
    return {"data": comp.fingerprint, "folds": folds_hash(cfg), "models": {m: settings_hash(cfg, m) for m in models},
            "oof": contents}


def check_blend_fresh(cfg: Config, comp: Competition, record: dict) -> None:
    """Refuse a blend made from other data, folds, model settings or OOF files than the current run's."""
    models = record.get("models", [])
    want = _blend_provenance(cfg, comp, models, {m: oof_contents(cfg, m) for m in models})
    have = record.get("provenance", {})
    for key in ("data", "folds", "models", "oof"):
        if have.get(key) != want[key]:
            changed = changed_folds(have.get("oof", {}), want["oof"]) if key == "oof" else []
            detail = f": {', '.join(changed)} retrained since" if changed else ""
            raise UserError(f"{cfg.out / 'oof' / 'blend.json'} is stale (its {key} differ from the current run{detail}); "
                            "rerun ./run.sh tune")
    for key in ("blend", "decision", "search"):
        if record.get(key) != getattr(cfg.tune, key):
            raise UserError(f"{cfg.out / 'oof' / 'blend.json'} was tuned with tune.{key}={record.get(key)}, this run "
                            f"asks for tune.{key}={getattr(cfg.tune, key)}; rerun ./run.sh tune")
