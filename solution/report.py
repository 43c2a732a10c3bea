"""Stage 5: oof/report.md + report.json + figures, oof/report.html (solution/report_html.py), and a short console table.

Every model and the blend get samples-F1 at 0.5, tuned in-sample and nested; micro/macro F1 and
per-label precision/recall/F1/support under the in-sample tuned decision; per-fold scores; and both decisions
(thresholds, expected F1) side by side. Every nested score has its 95% interval, every model and the blend their
paired difference from the best single model, and the blend the noise a leaderboard score would carry
(solution/stats.py).
"""
from __future__ import annotations

import numpy as np

from . import log, stats
from .artefacts import atomic_path, write_json
from .config import DECISIONS, Config
from .data import Competition
from .errors import UserError
from .labels import LABELS, NAMES
from .metric import f1_by_threshold, scores
from .oof import collect_oof
from .report_html import write_report_html
from .submit import load_blend
from .tune import Tuned, rank_transform
from .variants import describe

CURVE = np.round(np.arange(0.05, 0.96, 0.05), 2)


def _plots(fig_dir, entries: dict, blend_oof: np.ndarray, y: np.ndarray, weights: dict, curves: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{label} {NAMES[label]}" for label in LABELS]
    made = []

    def save(fig, name):
        with atomic_path(fig_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append(name)

    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(entries)
    for i, (name, entry) in enumerate(entries.items()):
        f1 = [entry["per_label"][str(label)]["f1"] for label in LABELS]
        ax.bar(np.arange(len(LABELS)) + i * width, f1, width, label=name)
    ax.set_xticks(np.arange(len(LABELS)) + 0.4 - width / 2, names, rotation=60, ha="right")
    ax.set_ylabel("F1 (OOF, in-sample tuned decision)")
    ax.set_ylim(0, 1)
    ax.legend(ncol=len(entries), fontsize=8)
    ax.set_title("Per-label F1 per model and for the blend")
    save(fig, "per_label_f1.png")

    fig, axes = plt.subplots(3, 6, figsize=(15, 7), sharex=True, sharey=True)
    for j, ax in enumerate(axes.flat):
        ax.plot(CURVE, f1_by_threshold(y[:, j], blend_oof[:, j], CURVE))
        ax.axvline(entries["blend"]["thresholds"][str(LABELS[j])], color="red", lw=0.8)
        ax.set_title(names[j], fontsize=8)
    fig.suptitle("Blend: per-label F1 against threshold (red: tuned threshold)")
    save(fig, "f1_vs_threshold.png")

    curves = {name: folds for name, folds in curves.items() if any(folds)}  # networks only
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
        for ax, (name, folds) in zip(axes[0], curves.items()):
            for k, history in enumerate(folds):
                ax.plot([h["epoch"] for h in history], [h["val_f1"] for h in history], label=f"fold {k}")
            ax.set_title(name)
            ax.set_xlabel("epoch")
        axes[0][0].set_ylabel("early-stopping samples-F1")
        axes[0][-1].legend(fontsize=7)
        save(fig, "learning_curves.png")

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(weights), list(weights.values()))
    ax.set_ylabel("weight")
    ax.set_title("Blend weights (searched on OOF)")
    save(fig, "blend_weights.png")
    return made


def _entry(name: str, y, probs, tuned: dict, decision: str) -> dict:
    """Scores of the saved tuning's label sets; they must reproduce tune's in-sample score exactly, else the
    report would describe other decisions than the ones tune scored (e.g. thresholds on the wrong scale)."""
    s = scores(y, Tuned.from_record(tuned).label_sets(probs, decision))
    if abs(s["samples_f1"] - tuned["samples_f1_tuned"]) > 1e-9:
        raise UserError(f"report: {name}'s in-sample samples-F1 {s['samples_f1']:.4f} differs from the "
                        f"{tuned['samples_f1_tuned']:.4f} that tune recorded; rerun ./run.sh tune")
    return {"samples_f1_at_0.5": tuned["samples_f1_at_0.5"], "samples_f1_tuned": tuned["samples_f1_tuned"],
            "samples_f1_nested": tuned["samples_f1_nested"], "by_decision": tuned["by_decision"],
            "micro_f1": s["micro_f1"], "macro_f1": s["macro_f1"], "per_label": s["per_label"], "per_fold": tuned["per_fold"]}


def _noise(cfg: Config, comp: Competition, record: dict, arrays: dict) -> dict:
    """95% intervals of every nested score and of each one's difference from the best single model (same rows),
    and the standard error of a leaderboard score of the blend on all of test.csv and on its public share."""
    if "nested_f1" not in arrays:
        raise UserError(f"{cfg.out / 'oof' / 'blend.npz'} has no per-row nested scores (an older version wrote it); "
                        "rerun ./run.sh tune")
    groups = record.get("groups", {})
    names = [*record["models"], "blend", *groups]
    rows = dict(zip(names, arrays["nested_f1"]))
    nested = {**{m: record["per_model"][m]["samples_f1_nested"] for m in record["models"]},
              "blend": record["f1"]["samples_f1_nested"], **{g: r["samples_f1_nested"] for g, r in groups.items()}}
    fold = arrays["fold"]
    for name in names:  # the rows must be the ones tune averaged, else the intervals describe another run
        if abs(stats.fold_mean(rows[name], fold) - nested[name]) > 1e-9:
            raise UserError(f"{cfg.out / 'oof' / 'blend.npz'}: {name}'s per-row scores do not average to the nested "
                            f"{nested[name]:.4f} of blend.json; rerun ./run.sh tune")
    best = max(record["models"], key=nested.get)
    best_of = {g: max(r["models"], key=nested.get) for g, r in groups.items()}  # a group's blend against its best member
    series = {**rows, **{f"{name} - best": rows[name] - rows[best] for name in names if name != best},
              **{f"{g} - its best": rows[g] - rows[m] for g, m in best_of.items()}}
    noise = stats.summarise(series, fold, cfg.report.resamples, cfg.seed)
    sd = float(np.std(rows["blend"], ddof=1))
    public = max(1, round(cfg.report.public_fraction * len(comp.test)))
    paired_sd = float(np.std(rows["blend"] - rows[best], ddof=1))
    return {"best": best, "intervals": {n: noise[n] for n in names},
            "groups": {g: {"models": r["models"], "weights": r["weights"], "samples_f1_nested": r["samples_f1_nested"],
                           "nested_95": noise[g], "against_its_best": {"model": best_of[g], **noise[f"{g} - its best"]}}
                       for g, r in groups.items()},
            "against_best": {n: noise[f"{n} - best"] for n in names if n != best},
            "leaderboard": {"per_row_sd": sd, "test_rows": len(comp.test), "se": sd / np.sqrt(len(comp.test)),
                            "public_fraction": cfg.report.public_fraction, "public_rows": public,
                            "public_se": sd / np.sqrt(public), "nested_se": sd / np.sqrt(len(comp.train)),
                            "blend_vs_best_public_se": paired_sd / np.sqrt(public)},
            "resamples": cfg.report.resamples}


def report(cfg: Config, comp: Competition) -> dict:
    record, arrays = load_blend(cfg, comp)
    noise = _noise(cfg, comp, record, arrays)
    models, curves, oofs, tests = {}, {}, {}, {}
    for model in record["models"]:
        oofs[model], tests[model], metas = collect_oof(cfg, comp, model)
        oof = oofs[model]
        if record["blend"] == "rank":  # its thresholds and calibration were fitted on the rank scale
            oof = rank_transform(oof, oof)[0]
        entry = _entry(model, comp.y, oof, record["per_model"][model], record["decision"])
        for fold, meta in zip(entry["per_fold"], metas):
            fold.update(best_epoch=meta["best_epoch"], early_stop_f1=meta["best_f1"])
        models[model] = entry
        curves[model] = [meta["history"] for meta in metas]
    blend = _entry("the blend", comp.y, arrays["oof"], {**record, **record["f1"]}, record["decision"])
    blend.update(weights=record["weights"], thresholds=record["thresholds"], blend=record["blend"],
                 decision=record["decision"], search=record["search"], leaderboard_noise=noise["leaderboard"])
    for name, entry in [*models.items(), ("blend", blend)]:
        entry["nested_95"] = noise["intervals"][name]
        if name in noise["against_best"]:
            entry["against_best"] = {"model": noise["best"], **noise["against_best"][name]}
    out = {"models": models, "blend": blend, "groups": noise["groups"]}
    write_json(cfg.out / "oof" / "report.json", out)
    figures = _plots(cfg.out / "oof" / "figures", {**models, "blend": blend}, arrays["oof"], comp.y,
                     record["weights"], curves)
    md = _markdown(cfg, out, figures)
    with atomic_path(cfg.out / "oof" / "report.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    page = write_report_html(cfg, comp, record, arrays, out, oofs, tests, md)
    log.info("\n" + _table(out) + "".join(f"\n{line}" for line in _group_lines(out)) + "\n" + _leaderboard(out))
    log.info(f"report: {cfg.out / 'oof' / 'report.md'}, report.json and {page} (errors, labels, test rows; "
             "open it in a browser)")
    return out


def _table(out: dict) -> str:
    """One row per model and the blend; the intervals are 95%, and 'against' is the paired difference from the best
    single model on the same rows."""
    best = out["blend"]["against_best"]["model"]
    rows = [("model", "F1@0.5", "tuned", "nested [95% interval]", "optimism", f"against {best} [95%]", "micro", "macro")]
    for name, e in [*out["models"].items(), ("BLEND", out["blend"])]:
        against = stats.signed(e["against_best"]) if "against_best" in e else "(best model)"
        rows.append((name, f"{e['samples_f1_at_0.5']:.4f}", f"{e['samples_f1_tuned']:.4f}", stats.text(e["nested_95"]),
                     f"{e['samples_f1_tuned'] - e['samples_f1_nested']:+.4f}", against, f"{e['micro_f1']:.4f}",
                     f"{e['macro_f1']:.4f}"))
    return log.columns(rows)


def _group_lines(out: dict) -> list[str]:
    """A line per blend of one modality: its nested score, and its paired difference from its own best member."""
    return [f"blend of the {g} ({', '.join(r['models'])}): nested {stats.text(r['nested_95'])}; against "
            f"{r['against_its_best']['model']}, the best of them alone, {stats.signed(r['against_its_best'])}"
            for g, r in out["groups"].items()]


def _leaderboard(out: dict) -> str:
    """How large a leaderboard move must be to mean something: the noise of the blend's score on the test rows."""
    lb, best = out["blend"]["leaderboard_noise"], out["blend"]["against_best"]["model"]
    return (f"Leaderboard noise: the blend's per-row F1 has sd {lb['per_row_sd']:.3f}, so a score on all {lb['test_rows']} "
            f"test rows has standard error {lb['se']:.4f}, and on the public {lb['public_fraction']:.0%} "
            f"({lb['public_rows']} rows, report.public_fraction) {lb['public_se']:.4f}. A public score within "
            f"±{1.96 * np.hypot(lb['public_se'], lb['nested_se']):.4f} of the nested estimate is within the noise of both. "
            f"Two submissions as different as the blend and {best} differ on the public rows with standard error "
            f"{lb['blend_vs_best_public_se']:.4f}: a jump between them under ±{1.96 * lb['blend_vs_best_public_se']:.4f} "
            "is noise.")


def _markdown(cfg: Config, out: dict, figures: list[str]) -> str:
    b = out["blend"]
    stop = (f"an inner {cfg.stop_fraction:.0%} of the training folds" if cfg.stop_fraction > 0
            else "fold k itself (stop_fraction=0: OOF scores are slightly optimistic)")
    lines = [
        "# OOF report", "",
        f"Expected leaderboard samples-F1 (nested CV): **{b['samples_f1_nested']:.4f}** (95% interval "
        f"{b['nested_95']['low']:.4f} to {b['nested_95']['high']:.4f}, the sampling noise of these rows). "
        f"Tuning the blend and its decision on all OOF rows and scoring the same rows gives {b['samples_f1_tuned']:.4f}, "
        f"which is optimistic by {b['samples_f1_tuned'] - b['samples_f1_nested']:+.4f}.", "",
        f"Folds: {cfg.n_folds}, seed {cfg.seed}. Early stopping watched {stop}. Blend: {b['blend']}. "
        f"Decision: {b['decision']}. Weight search: {b['search']}.", "",
        "samples-F1: at 0.5 = every label at threshold 0.5; tuned = searched weights plus the decision's parameters "
        "(per-label thresholds, or per-label calibration for expected_f1) fitted and scored on all OOF rows (in-sample); "
        "nested = fitted on the other folds' OOF, scored on fold k, averaged. "
        "Micro/macro and per-label figures use the in-sample tuned decision.", "",
        "```", _table(out), "```", "",
        "## Models", "", "| model | what it is (kind, backbone, its variant settings) |", "|---|---|",
        *[f"| {name} | {describe(cfg, name)} |" for name in out["models"]], "",
        "## Noise", "",
        f"samples-F1 is a mean over rows, so each score moves with the rows it is measured on. The 95% intervals come "
        f"from {cfg.report.resamples} bootstrap resamples of the rows within each fold (each row scored by the tuning "
        "fitted without its fold); 'against' is the difference from the best single model on the same rows, resampled "
        "in pairs, so the noise both share cancels. An interval that excludes 0 is a difference the rows support. Neither "
        "counts the noise of retraining the models with another seed.", "",
        _leaderboard(out), "",
        *([ "## Blends of one modality", "",
            "Each blended and tuned on its own, nested like the blend: what a second image model adds to the first, or "
            "more caption models to one. 'against' is the paired difference from the best of its members alone.", "",
            *[f"- {line}" for line in _group_lines(out)], ""] if out["groups"] else []),
        "## Decisions compared", "",
        "How the probabilities become labels: per-label thresholds (Optuna), or per image the set with the highest "
        "expected F1 after per-label Platt calibration. The run uses tune.decision.", "",
        "| model | " + " | ".join(f"{d} {kind}" for d in DECISIONS for kind in ("in-sample", "nested")) + " |",
        "|---" * (1 + 2 * len(DECISIONS)) + "|",
        *[f"| {name} | " + " | ".join(f"{e['by_decision'][d][k]:.4f}" for d in DECISIONS
                                      for k in ("samples_f1_tuned", "samples_f1_nested")) + " |"
          for name, e in [*out["models"].items(), ("blend", b)]], "",
        "## Blend", "", "| model | weight |", "|---|---|",
        *[f"| {m} | {w:.3f} |" for m, w in b["weights"].items()], "",
        "| label | name | threshold (if tune.decision=thresholds) | precision | recall | F1 | support |", "|---|---|---|---|---|---|---|",
        *[f"| {label} | {NAMES[label]} | {b['thresholds'][str(label)]:.2f} | {b['per_label'][str(label)]['precision']:.3f} | "
          f"{b['per_label'][str(label)]['recall']:.3f} | {b['per_label'][str(label)]['f1']:.3f} | "
          f"{b['per_label'][str(label)]['support']} |" for label in LABELS], "",
        "## Per fold", "", "| model | " + " | ".join(f"fold {k}" for k in range(cfg.n_folds)) + " |",
        "|---|" + "---|" * cfg.n_folds,
        *[f"| {name} (nested) | " + " | ".join(f"{f['samples_f1_nested']:.4f}" for f in e["per_fold"]) + " |"
          for name, e in [*out["models"].items(), ("blend", b)]], "",
        "## Per label, per model (F1)", "", "| label | " + " | ".join(out["models"]) + " | blend |",
        "|---|" + "---|" * (len(out["models"]) + 1),
        *[f"| {label} {NAMES[label]} | " + " | ".join(f"{e['per_label'][str(label)]['f1']:.3f}"
                                                       for e in [*out["models"].values(), b]) + " |" for label in LABELS], "",
        "## Figures", "", *[f"![{f}](figures/{f})" for f in figures], "",
    ]
    return "\n".join(lines)
