"""Nested blend score and weight-search time against the number of models, for each tune.search.

From an out_dir whose models are trained (its oof/config.json gives the settings they were trained with, and
key=value changes them as for ./run.sh): the models of `models=`, then the extra ones of --add, are blended
in prefixes of growing size (--sizes), and each prefix is tuned as `./run.sh tune` tunes (weights, thresholds
and calibration fitted on the other folds' OOF, scored on fold k) with every search of --searches. Prints a
markdown table: the nested samples-F1 with its 95% interval, its paired difference from the first search and
from the prefix's best single model (same rows, 95% interval), and the CPU seconds spent searching weights and
tuning the blend in all (CPU, not wall, time: on a shared machine wall time measures the neighbours).

    .venv/bin/python bench/blend_search.py data_dir=D out_dir=O models=bilstm,tfidf,minilm \\
        --add /tmp/other_out:bilstm --add copy:minilm --add constant --add noisy:tfidf:0.5 \\
        --sizes 3,6,9 --search tune.search=optuna_global --search "tune.search=greedy tune.steps=20" [key=value ...]

--add, in order:
  OUT_DIR:model   a model trained in another out_dir on the same data and folds (its oof/config.json has its settings)
  copy:model      an exact duplicate of a model already in the stack
  constant        every row gets each label's share of positives (a model that knows nothing about the row)
  noisy:model:sd  a model's OOF with seeded Gaussian noise of sd added to the logit
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import optuna
from scipy.special import expit

from solution import stats
from solution.artefacts import read_json
from solution.config import SEARCHES, config_from_dict
from solution.settings import build_config
from solution.data import load_competition
from solution.errors import UserError
from solution.folds import folds_hash, read_folds
from solution.tune import _logit, evaluate, load_models


def trained_config(keys: list[str]):
    """The settings out_dir's models were trained with (its oof/config.json), then `keys`."""
    saved = build_config(keys).out / "oof" / "config.json"
    return build_config(keys, base=config_from_dict(read_json(saved)) if saved.exists() else None)


def extra_model(spec: str, cfg, comp, stack: dict, rng) -> tuple[str, np.ndarray]:
    """(name, OOF probabilities) of one --add spec."""
    if spec == "constant":
        return "constant", np.broadcast_to(comp.y.mean(axis=0), comp.y.shape).astype(np.float32)
    kind, _, rest = spec.partition(":")
    if kind == "copy":
        return f"copy of {rest}", stack[rest].copy()
    if kind == "noisy":
        model, sd = rest.split(":")
        noisy = expit(_logit(stack[model]) + rng.normal(0, float(sd), stack[model].shape))
        return f"{model} + noise {sd}", noisy.astype(np.float32)
    out, model = spec.rsplit(":", 1)
    other = dataclasses.replace(config_from_dict(read_json(Path(out) / "oof" / "config.json")), out_dir=out, tune=cfg.tune)
    if folds_hash(other) != folds_hash(cfg):
        raise UserError(f"{out}/folds/folds.csv differs from {cfg.out_dir}/folds/folds.csv; train it on a copy of those folds")
    return f"{model}@{Path(out).name}", load_models(other, comp, [model])[0][model]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--add", action="append", default=[], help="an extra model (see above); repeat in order")
    parser.add_argument("--sizes", default="", help="comma list of model counts (default: all the models)")
    parser.add_argument("--search", action="append", default=[],
                        help=f"the key=value settings of one search (space-separated; tune.search is one of "
                             f"{', '.join(SEARCHES)}); repeat to compare (default: optuna_global, then greedy)")
    args, keys = parser.parse_known_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = trained_config(keys)
    comp = load_competition(cfg.data_dir, cfg.limit)
    fold_of_row = read_folds(cfg, comp)
    stack = load_models(cfg, comp, cfg.models)[0]
    rng = np.random.default_rng(cfg.seed)
    for spec in args.add:
        name, probs = extra_model(spec, cfg, comp, stack, rng)
        stack[name] = probs
    names = list(stack)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [len(names)]
    if not all(1 <= size <= len(names) for size in sizes):
        raise UserError(f"--sizes {args.sizes}: each must be 1..{len(names)}, the models there are")
    searches = args.search or ["tune.search=optuna_global", "tune.search=greedy"]
    print(f"models in order: {', '.join(f'{i + 1}. {n}' for i, n in enumerate(names))}", file=sys.stderr)
    singles = {}
    for name in names[:max(sizes)]:
        singles[name] = evaluate(stack[name][None], comp.y, fold_of_row, cfg)
        print(f"{name}: nested {singles[name]['samples_f1_nested']:.4f}", file=sys.stderr)
    print(f"| models | search | nested {cfg.tune.decision} [95%] | against `{searches[0]}` [95%] | against the best single "
          f"model [95%] | best single model | weight search, CPU s ({cfg.n_folds + 1} fits) | whole blend tune, CPU s | "
          "weights (all rows) |")
    print("|---" * 9 + "|")
    for size in sizes:
        best = max(names[:size], key=lambda n: singles[n]["samples_f1_nested"])
        arrays = np.stack([stack[n] for n in names[:size]])
        runs = {}
        for search in searches:
            start = time.process_time()
            runs[search] = evaluate(arrays, comp.y, fold_of_row, trained_config([*keys, *search.split()]))
            runs[search]["seconds"] = time.process_time() - start
        series = {}
        for search, run in runs.items():
            series[search] = run["row_f1"]
            series[f"{search} - first"] = run["row_f1"] - runs[searches[0]]["row_f1"]
            series[f"{search} - best"] = run["row_f1"] - singles[best]["row_f1"]
        noise = stats.summarise(series, fold_of_row, cfg.report.resamples, cfg.seed)
        for search, run in runs.items():
            weights = ", ".join(f"{n} {w:.2f}" for n, w in zip(names, run["tuned"].weights) if w > 0)
            print(f"| {size} | `{search}` | {stats.text(noise[search])} | {stats.signed(noise[f'{search} - first'])} | "
                  f"{stats.signed(noise[f'{search} - best'])} | {best} {singles[best]['samples_f1_nested']:.4f} | "
                  f"{run['search_seconds']:.1f} | {run['seconds']:.1f} | {weights} |", flush=True)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as err:
        sys.exit(f"error: {err}")
