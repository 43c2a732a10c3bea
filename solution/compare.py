"""`./run.sh compare out_dir=NEW compare.baseline=OLD`: did a change (a setting, a model, a search) help, beyond noise?

Both runs' `tune` saved each row's nested F1 (oof/blend.npz). On the same data, folds and rows, the difference of
two runs' nested scores is the mean of per-row differences, resampled in pairs within each fold like every interval
(solution/stats.py), so the noise both runs share cancels. Runs on other data, folds or rows are refused: their
per-row scores do not pair; so is a run whose OOF files changed after its tune (its blend no longer scores them).
Only the rows' sampling noise is counted, not that of retraining with another seed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from . import log, stats
from .artefacts import check_provenance, load_arrays, read_json
from .config import Config
from .errors import UserError
from .oof import changed_folds, oof_contents


def _tuned_run(cfg: Config, out: Path) -> tuple[dict, dict, dict]:
    """(blend.json, blend.npz meta, arrays) of one run's tune, checked against each other and against the OOF
    files in its out_dir (each fold's content hash as tune read it)."""
    if not (out / "oof" / "blend.json").exists():
        raise UserError(f"{out / 'oof' / 'blend.json'} is missing; run ./run.sh tune out_dir={out} first")
    record = read_json(out / "oof" / "blend.json")
    meta, arrays = load_arrays(out / "oof" / "blend.npz")
    check_provenance(out / "oof" / "blend.npz", meta, record["provenance"], f"./run.sh tune out_dir={out}")
    run = dataclasses.replace(cfg, out_dir=str(out), n_folds=record["n_folds"])
    changed = changed_folds(record["provenance"]["oof"], {m: oof_contents(run, m) for m in record["models"]})
    if changed:
        raise UserError(f"compare: {out / 'oof' / 'blend.json'} no longer matches the OOF in {out} ({', '.join(changed)} "
                        f"retrained or removed since its tune); rerun ./run.sh tune out_dir={out}")
    if "nested_f1" not in arrays:
        raise UserError(f"{out / 'oof' / 'blend.npz'} has no per-row nested scores (an older version wrote it); "
                        f"rerun ./run.sh tune out_dir={out}")
    return record, meta, arrays


def paired_runs(cfg: Config) -> tuple[dict, dict, dict, dict]:
    """(baseline record, its arrays, this run's record, its arrays), refused in one line unless both runs' tune
    scored the same rows of the same data in the same folds. The CLI calls it before anything is logged."""
    if not cfg.compare.baseline:
        raise UserError("compare needs compare.baseline=<the out_dir of the earlier run>")
    old_dir, new_dir = Path(cfg.compare.baseline), cfg.out
    old, old_meta, old_arrays = _tuned_run(cfg, old_dir)
    new, new_meta, new_arrays = _tuned_run(cfg, new_dir)
    for key, what in (("data", "data fingerprint"), ("folds", "folds hash")):
        if old_meta[key] != new_meta[key]:
            raise UserError(f"compare: {old_dir} and {new_dir} differ in their {what} ({old_meta[key]} against "
                            f"{new_meta[key]}); only runs on the same data and folds pair row by row (copy folds/ "
                            "into the new out_dir before training)")
    if not np.array_equal(old_arrays["oof_ids"], new_arrays["oof_ids"]):
        raise UserError(f"compare: {old_dir} and {new_dir} scored other rows (their ImageIDs differ, e.g. limit=); "
                        "only runs on the same rows pair row by row")
    return old, old_arrays, new, new_arrays


def compare(cfg: Config, runs: tuple | None = None) -> dict:
    """Per model in both runs, and for the blend: each run's nested score and the paired difference, with 95% intervals."""
    old, old_arrays, new, new_arrays = runs or paired_runs(cfg)
    old_dir, new_dir = Path(cfg.compare.baseline), cfg.out
    rows = {}
    for run, record, arrays in (("old", old, old_arrays), ("new", new, new_arrays)):
        rows[run] = dict(zip([*record["models"], "BLEND"], arrays["nested_f1"]))
    names = [m for m in new["models"] if m in old["models"]] + ["BLEND"]
    series = {}
    for name in names:
        series.update({f"{name} old": rows["old"][name], f"{name} new": rows["new"][name],
                       f"{name} diff": rows["new"][name] - rows["old"][name]})
    noise = stats.summarise(series, new_arrays["fold"], cfg.report.resamples, cfg.seed)
    result = {name: {run: noise[f"{name} {run}"] for run in ("old", "new", "diff")} for name in names}
    table = [("model", f"baseline {old['decision']} [95%]", f"this run {new['decision']} [95%]", "difference [95%]")]
    table += [(name, stats.text(r["old"]), stats.text(r["new"]), stats.signed(r["diff"])) for name, r in result.items()]
    only = sorted(set(old["models"]) ^ set(new["models"]))
    log.info(f"compare: {new_dir} (this run) against {old_dir} (baseline), nested samples-F1 on the same "
             f"{len(new_arrays['oof_ids'])} rows; a difference whose interval excludes 0 is more than row noise"
             + (f"; in one run only: {', '.join(only)}" if only else "") + "\n"
             + log.columns(table))
    return result
