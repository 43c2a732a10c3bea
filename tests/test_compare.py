"""`./run.sh compare`: paired differences of two runs' nested scores, refused in one line across data, folds or rows.

The runs are tune's two files (oof/blend.json, blend.npz), written by the real artefact writers: compare reads
nothing else, so no training is needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from solution.artefacts import save_arrays, write_json
from solution.cli import main as cli_main

ROWS = 300


def fold_oof(out: Path, model: str, k: int, value: float = 0.5) -> str:
    """oof/<model>/fold<k>.npz as training writes it (its content hash is what tune records)."""
    return save_arrays(out / "oof" / model / f"fold{k}.npz", {"model": model, "fold": k},
                       val_probs=np.full((ROWS // 3, 18), value, np.float32))


def tuned_run(out: Path, rows: np.ndarray, data: str = "data-1", folds: str = "folds-1", ids=None) -> Path:
    """An out_dir holding what tune writes for models a and b, and the 3 folds of OOF it read: rows = per-row
    nested F1 of a, b and the blend."""
    oof = {model: [fold_oof(out, model, k) for k in range(3)] for model in ("a", "b")}
    provenance = {"data": data, "folds": folds, "models": {"a": "x", "b": "y"}, "oof": oof}
    ids = np.array([f"{i}.jpg" for i in range(ROWS)]) if ids is None else ids
    save_arrays(out / "oof" / "blend.npz", provenance, oof_ids=ids, nested_f1=rows, fold=np.arange(ROWS) % 3)
    write_json(out / "oof" / "blend.json", {"models": ["a", "b"], "decision": "expected_f1", "n_folds": 3,
                                            "provenance": provenance})
    return out


@pytest.fixture
def rows():
    return np.random.default_rng(0).choice([1.0, 2 / 3, 0.5, 0.0], size=(3, ROWS), p=[0.6, 0.2, 0.15, 0.05])


def compare_result(new: Path, old: Path) -> dict:
    from solution.compare import compare
    from solution.settings import build_config

    return compare(build_config([f"out_dir={new}", f"compare.baseline={old}", "report.resamples=300"]))


def test_a_run_against_itself_differs_by_exactly_zero(tmp_path, rows):
    run = tuned_run(tmp_path / "A", rows)
    result = compare_result(run, run)
    assert set(result) == {"a", "b", "BLEND"}
    for entry in result.values():
        assert entry["diff"] == {"score": 0.0, "low": 0.0, "high": 0.0}
        assert entry["old"] == entry["new"]


def test_a_run_better_on_every_row_is_more_than_noise(tmp_path, rows):
    old = tuned_run(tmp_path / "old", rows)
    new = tuned_run(tmp_path / "new", rows + 0.001)
    blend = compare_result(new, old)["BLEND"]["diff"]
    assert blend["score"] == pytest.approx(0.001) and blend["low"] > 0


@pytest.mark.parametrize("change,named", [({"folds": "folds-2"}, "folds hash"), ({"data": "data-2"}, "data fingerprint"),
                                          ({"ids": np.array([f"{i}.png" for i in range(ROWS)])}, "ImageIDs")])
def test_runs_on_other_folds_data_or_rows_are_refused_in_one_line(tmp_path, rows, capsys, change, named):
    old = tuned_run(tmp_path / "old", rows)
    new = tuned_run(tmp_path / "new", rows, **change)
    assert cli_main(["compare", f"out_dir={new}", f"compare.baseline={old}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: compare:") and named in err[0] and str(old) in err[0], err


def test_compare_without_a_baseline_says_which_key(tmp_path, rows, capsys):
    assert cli_main(["compare", f"out_dir={tuned_run(tmp_path / 'A', rows)}"]) == 2
    assert "compare.baseline=" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["old", "new"])
def test_a_run_whose_oof_changed_after_its_tune_is_refused_in_one_line(tmp_path, rows, capsys, which):
    runs = {"old": tuned_run(tmp_path / "old", rows), "new": tuned_run(tmp_path / "new", rows)}
    fold_oof(runs[which], "b", 2, value=0.9)  # fold 2 of b retrained after tune
    assert cli_main(["compare", f"out_dir={runs['new']}", f"compare.baseline={runs['old']}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: compare:"), err
    assert str(runs[which] / "oof" / "blend.json") in err[0] and "b fold 2" in err[0] and "rerun ./run.sh tune" in err[0]
