"""Bad inputs end to end on the caption-only path (models=tfidf: seconds, no images).

`all` runs as `python -m solution` in the background right after collection (conftest calls start_background
and runs these tests last), and `submit` after a fold is deleted starts as soon as `all` has finished, so the
runs overlap the other tests. `train` on each damaged copy of the data runs the CLI's main() in this process:
the data is refused before anything is trained, so an interpreter start per copy would cost more than the check.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from solution.csvio import TEST_COLUMNS, read_table
from solution.labels import LABELS

FAST = ["models=tfidf", "n_folds=2", "num_workers=0", "tune.trials=5", "tune.threshold_trials=3"]


def start_background(root: Path, start) -> dict:
    """`all` on 60/20 synthetic captions (tests copy its out_dir to change it)."""
    from solution.demo import make_dataset

    master = make_dataset(root / "D", n_train=60, n_test=20, images=False)
    return {"all": (master, root / "O", start("all", f"data_dir={master}", f"out_dir={root / 'O'}", *FAST))}


@pytest.fixture(scope="module")
def runs(background, tmp_path_factory, start_cli):
    return background.get(__name__) or start_background(tmp_path_factory.mktemp("bad_inputs"), start_cli)


@pytest.fixture(scope="module")
def finished(runs):
    data, out, run = runs["all"]
    proc = run.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
    return data, out


@pytest.fixture(scope="module")
def missing_fold_submit(finished, tmp_path_factory, start_cli):
    """`submit` on a copy of out_dir without oof/tfidf/fold1.npz, started in the background."""
    data, out = finished
    copy = shutil.copytree(out, tmp_path_factory.mktemp("missing_fold") / "O")
    (copy / "submissions" / "submission.csv").unlink()
    (copy / "oof" / "tfidf" / "fold1.npz").unlink()
    return copy, start_cli("submit", f"data_dir={data}", f"out_dir={copy}", *FAST)


# ---- damaged copies of the data: each must stop `train` with one line naming file and line ------

def replace_line(path, number: int, text: str) -> None:
    lines = path.read_bytes().split(b"\r\n")
    lines[number - 1] = text.encode()
    path.write_bytes(b"\r\n".join(lines))


def line_of(path, number: int) -> str:
    return path.read_bytes().split(b"\r\n")[number - 1].decode()


def damage_header_missing(d):
    path = d / "train.csv"
    path.write_bytes(path.read_bytes().split(b"\r\n", 1)[1])
    return "train.csv", "line 1"


def damage_header_misspelt(d):
    replace_line(d / "test.csv", 1, "ImageId,Caption")
    return "test.csv", "line 1"


def damage_header_with_bare_cr(d):  # the message quotes the header: still one line
    replace_line(d / "train.csv", 1, "ImageID,Labels,Cap\ration")
    return "train.csv", "line 1"


def damage_non_utf8(d):
    path = d / "train.csv"
    lines = path.read_bytes().split(b"\r\n")
    lines[9] = lines[9] + b" caf\xe9"
    path.write_bytes(b"\r\n".join(lines))
    return "train.csv", "line 10"


def _label(value):
    def damage(d):
        image_id, _, caption = line_of(d / "train.csv", 7).split(",", 2)
        replace_line(d / "train.csv", 7, f"{image_id},{value},{caption}")
        return "train.csv", "line 7"

    damage.__name__ = f"damage_label_{value or 'empty'}"
    return damage


def damage_duplicate_id(d):
    first = line_of(d / "train.csv", 4).split(",", 1)[0]
    _, rest = line_of(d / "train.csv", 30).split(",", 1)
    replace_line(d / "train.csv", 30, f"{first},{rest}")
    return "train.csv", "line 30"


def damage_test_id_in_train(d):
    train_id = line_of(d / "train.csv", 5).split(",", 1)[0]
    _, caption = line_of(d / "test.csv", 3).split(",", 1)
    replace_line(d / "test.csv", 3, f"{train_id},{caption}")
    return "test.csv", "line 3"


def damage_missing_field(d):
    replace_line(d / "train.csv", 12, "11.jpg")
    return "train.csv", "line 12"


def damage_image_id_outside_data(d):
    _, caption = line_of(d / "test.csv", 4).split(",", 1)
    replace_line(d / "test.csv", 4, f"../evil.jpg,{caption}")
    return "test.csv", "line 4: ImageID '../evil.jpg' is not a plain file name"


def damage_test_csv_empty(d):
    (d / "test.csv").write_bytes(b"")
    return "test.csv", "empty"


DAMAGES = [damage_header_missing, damage_header_misspelt, damage_header_with_bare_cr, damage_non_utf8, _label("12"),
           _label("20"), _label("0"), _label(""), damage_duplicate_id, damage_test_id_in_train, damage_missing_field,
           damage_image_id_outside_data, damage_test_csv_empty]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__.replace("damage_", ""))
def test_damaged_data_stops_train_with_one_line(demo_csv, tmp_path, capsys, assert_cli_error, nothing_half_written,
                                                damage):
    from solution.cli import main

    file, where = damage(demo_csv)
    out = tmp_path / "O"
    args = ["train", f"data_dir={demo_csv}", f"out_dir={out}", *FAST]
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    assert_cli_error(subprocess.CompletedProcess(args, code, captured.out, captured.err), str(demo_csv / file), where)
    nothing_half_written(out)
    assert not (out / "oof").exists() and not (out / "checkpoints").exists()


def test_all_writes_a_submission_for_exactly_the_test_rows(finished):
    data, out = finished
    sub = read_table(out / "submissions" / "submission.csv", ("ImageID", "Labels"))
    test = read_table(data / "test.csv", TEST_COLUMNS)
    assert [r[0] for r in sub.rows] == [r[0] for r in test.rows]
    allowed = set(map(str, LABELS))
    for image_id, labels in sub.rows:
        assert labels.split() and set(labels.split()) <= allowed, (image_id, labels)
    assert (out / "folds" / "folds.csv").exists() and not list(out.rglob("*.tmp"))


def test_tune_is_deterministic(finished, missing_fold_submit, tmp_path):
    """`tune` twice with the same seed gives the same thresholds and weights as the `all` run's tune."""
    from solution.settings import build_config
    from solution.data import load_competition
    from solution.tune import tune

    data, out = finished
    first = json.loads((out / "oof" / "blend.json").read_text())
    copy = shutil.copytree(out, tmp_path / "O")
    cfg = build_config([f"data_dir={data}", f"out_dir={copy}", *FAST])
    comp = load_competition(data)
    records = []
    for _ in range(2):
        tune(cfg, comp)
        records.append(json.loads((copy / "oof" / "blend.json").read_text()))
    for record in records:
        assert record["thresholds"] == first["thresholds"]
        assert record["weights"] == first["weights"] and record["f1"] == first["f1"]
    assert len(first["thresholds"]) == len(LABELS)


def test_submit_names_the_missing_fold_to_rerun(missing_fold_submit):
    copy, run = missing_fold_submit
    proc = run.result()
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert "fold=1" in errors[0] and "models=tfidf" in errors[0] and "fold1.npz" in errors[0]
    assert not (copy / "submissions" / "submission.csv").exists() and not list(copy.rglob("*.tmp"))


def test_blend_search_bench_tabulates_the_out_dir(finished):
    """bench/blend_search.py on the `all` run's out_dir (its trained settings come from oof/config.json), with a
    duplicate and a constant model added: a row per size and search, and greedy never takes the duplicate."""
    import subprocess
    import sys

    data, out = finished
    proc = subprocess.run([sys.executable, "bench/blend_search.py", f"data_dir={data}", f"out_dir={out}", "--add",
                           "copy:tfidf", "--add", "constant", "--sizes", "1,3", "report.resamples=200"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][1:]  # after the header
    assert [row.split(" | ")[:2] for row in rows] == [["| 1", "`tune.search=optuna_global`"], ["| 1", "`tune.search=greedy`"],
                                                      ["| 3", "`tune.search=optuna_global`"], ["| 3", "`tune.search=greedy`"]]
    assert all(row.count("[") == 3 for row in rows) and "copy of tfidf" not in rows[3]
