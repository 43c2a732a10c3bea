"""End to end through the CLI: all stages on tiny demo data, predict, kill-and-resume, stale artefacts."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from solution.artefacts import load_arrays, read_json, read_meta
from solution.settings import build_config
from solution.context import FoldJob
from solution.data import load_test_only
from solution.demo import make_dataset
from solution.labels import LABELS
from solution.oof import oof_path
from solution.cli import main as cli_main
from solution.oof import read_record
from solution.predict import recorded_model
from solution.train import ImageSource

REPO = Path(__file__).resolve().parents[1]
# Beside the built-ins: a second image variant (another tiny backbone at another size) and a fusion stacked on
# it, and a frozen EfficientNet-Lite0 with real ImageNet weights (the efficientnet-lite0 package) and a fusion on it.
VARIANTS = """
[convnext]
kind = "image"
image.model = "test_convnext"
image.size = 40

[fuse_convnext]
kind = "fusion"
fusion.image_model = "convnext"

[lite0]
kind = "embed"
embed.size = 64
embed.epochs = 5

[fuse_lite0]
kind = "fusion"
fusion.image_model = "lite0"
"""
NAMES = ["resnet50", "convnext", "lite0", "bilstm", "tfidf", "fusion", "fuse_convnext", "fuse_lite0", "joint"]
TINY = ["n_folds=3", "num_workers=0", "image.model=test_resnet", "image.size=32", "image.pretrained=false",
        "image.epochs=3", "image.batch_size=16", "image.lr=3e-3", "text.epochs=4", "text.batch_size=16",
        "fusion.epochs=4", "fusion.hidden=64", "tune.trials=8", "tune.threshold_trials=4"]


def cli(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "solution", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def start_background(root: Path, start) -> dict:
    """`all` with every model on a tiny demo dataset, started right after collection (conftest) so it overlaps
    the other tests."""
    make_dataset(root / "data", n_train=90, n_test=25, size=(64, 48))
    (root / "variants.toml").write_text(VARIANTS)
    return {"root": root, "all": start("all", *every_model(root))}


def every_model(root: Path) -> list[str]:
    """The data, out_dir, variants file and models of the end-to-end run."""
    return [f"data_dir={root / 'data'}", f"out_dir={root / 'out'}", f"variants={root / 'variants.toml'}",
            f"models={','.join(NAMES)}", *TINY]


@pytest.fixture(scope="module")
def finished(background, tmp_path_factory, start_cli):
    started = background.get(__name__) or start_background(tmp_path_factory.mktemp("e2e"), start_cli)
    proc = started["all"].result(timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return started["root"], proc


def test_all_writes_a_valid_submission(finished):
    root, _ = finished
    sub = pd.read_csv(root / "out" / "submissions" / "submission.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(root / "data" / "test.csv", dtype=str)
    assert list(sub.columns) == ["ImageID", "Labels"]
    assert sub["ImageID"].tolist() == test["ImageID"].tolist()
    allowed = set(map(str, LABELS))
    assert all(labels and set(labels.split()) <= allowed for labels in sub["Labels"])
    stamped = list((root / "out" / "submissions").glob("submission-*.csv"))
    assert len(stamped) == 1 and stamped[0].read_text() == (root / "out" / "submissions" / "submission.csv").read_text()


def test_report_has_the_documented_schema_and_figures(finished):
    root, proc = finished
    report = json.loads((root / "out" / "oof" / "report.json").read_text())
    assert set(report) == {"models", "blend", "groups"}
    images = report["groups"]["image models"]  # the image models blended on their own, nested, with its interval
    assert images["models"] == ["resnet50", "convnext", "lite0"] and set(images["weights"]) == set(images["models"])
    assert images["nested_95"]["low"] <= images["samples_f1_nested"] <= images["nested_95"]["high"]
    assert images["against_its_best"]["model"] in images["models"] and "blend of the image models" in proc.stderr
    for name in NAMES:
        entry = report["models"][name]
        for key in ("samples_f1_at_0.5", "samples_f1_tuned", "samples_f1_nested", "per_label", "per_fold"):
            assert key in entry, (name, key)
        assert set(entry["per_label"]) == set(map(str, LABELS))
        assert len(entry["per_fold"]) == 3
        assert name in proc.stderr  # the console table names every model
    for key in ("samples_f1_at_0.5", "samples_f1_tuned", "samples_f1_nested", "weights", "thresholds"):
        assert key in report["blend"]
    for name, entry in [*report["models"].items(), ("blend", report["blend"])]:  # every nested score has its interval
        assert entry["nested_95"]["low"] <= entry["samples_f1_nested"] <= entry["nested_95"]["high"], name
        assert abs(entry["nested_95"]["score"] - entry["samples_f1_nested"]) < 1e-12, name
    best = max(report["models"], key=lambda m: report["models"][m]["samples_f1_nested"])
    assert "against_best" not in report["models"][best] and report["blend"]["against_best"]["model"] == best
    assert report["blend"]["leaderboard_noise"]["test_rows"] == 25
    assert "nested [95% interval]" in proc.stderr and "Leaderboard noise" in proc.stderr
    assert set(report["blend"]["weights"]) == set(NAMES)
    md = (root / "out" / "oof" / "report.md").read_text()
    for figure in ("per_label_f1.png", "f1_vs_threshold.png", "blend_weights.png"):
        assert f"figures/{figure}" in md
        assert (root / "out" / "oof" / "figures" / figure).stat().st_size > 1000
    assert "nested" in md.lower()



def test_report_html_shows_every_photo_and_where_image_and_caption_models_disagree(finished):
    """With image models the page has a thumbnail per card (from the image cache), and each gallery card's
    data-disagree names the labels where the image models' mean probability and the caption models' fall on
    opposite sides of 0.5 (fusion and joint read both, so count for neither)."""
    import re

    from solution.data import load_competition
    from solution.oof import collect_oof

    root, _ = finished
    text = (root / "out" / "oof" / "report.html").read_text()
    cards = re.findall(r'<div class="card" data-row="(\d+)"[^>]*data-disagree="([^"]*)">(<img class="thumb")?', text)
    assert len(cards) == 90 and all(thumb for _, _, thumb in cards)  # the gallery holds every row of this tiny run
    cfg = build_config(every_model(root))
    comp = load_competition(cfg.data_dir)
    mean = {side: np.mean([collect_oof(cfg, comp, m)[0] for m in models], axis=0) >= 0.5
            for side, models in (("image", ("resnet50", "convnext", "lite0")), ("caption", ("bilstm", "tfidf")))}
    disagree = mean["image"] != mean["caption"]
    assert any(labels for _, labels, _ in cards)
    for row, labels, _ in cards:
        assert labels == " ".join(str(LABELS[j]) for j in np.flatnonzero(disagree[int(row)])), row

def test_config_is_saved_beside_the_outputs(finished):
    root, _ = finished
    saved = json.loads((root / "out" / "oof" / "config.json").read_text())
    assert saved["image"]["model"] == "test_resnet" and saved["n_folds"] == 3


def test_each_variant_trains_into_its_own_folders_with_its_own_settings(finished):
    root, _ = finished
    out = root / "out"
    for name in ("convnext", "fuse_convnext"):
        for k in range(3):
            assert (out / "oof" / name / f"fold{k}.npz").exists(), (name, k)
            assert read_json(out / "checkpoints" / name / f"fold{k}" / "fold.json")["model"] == name
    saved = read_json(out / "oof" / "convnext" / "config.json")
    assert saved["kind"] == "image" and saved["variant"] == {"kind": "image", "image.model": "test_convnext", "image.size": 40}
    assert saved["config"]["image"]["model"] == "test_convnext" and saved["config"]["image"]["size"] == 40
    record = read_json(out / "checkpoints" / "resnet50" / "fold0" / "fold.json")
    assert record["kind"] == "image" and record["config"]["image"]["model"] == "test_resnet"  # the run's settings
    stacked = read_json(out / "checkpoints" / "fuse_convnext" / "fold0" / "fold.json")
    assert set(stacked["provenance"]["upstream"]) == {"convnext", "bilstm"}
    assert (out / "cache" / "images_40.bin").exists() and (out / "cache" / "images_32.bin").exists()  # one per side
    assert "| convnext | image: test_convnext @ 40 px" in (out / "oof" / "report.md").read_text()


def test_a_second_embed_run_decodes_and_embeds_nothing(finished, capsys):
    root, _ = finished
    cache = root / "out" / "cache"
    (bin_file,) = cache.glob("embed_tf_efficientnet_lite0_*.bin")
    size = bin_file.stat().st_size
    capsys.readouterr()
    _in_process("train", *every_model(root), "models=lite0")
    err = capsys.readouterr().err
    assert "all 115 images are in" in err and "nothing decoded or embedded" in err and "embedding" not in err
    assert bin_file.stat().st_size == size


def test_changing_one_variant_makes_only_it_and_its_stacks_stale(finished, tmp_path, capsys):
    root, _ = finished
    out = Path(shutil.copytree(root / "out", tmp_path / "out"))
    changed = tmp_path / "variants.toml"
    changed.write_text(VARIANTS.replace("image.size = 40", "image.size = 36"))
    common = [*every_model(root), f"out_dir={out}", f"variants={changed}"]
    before = {(m, k): read_meta(out / "oof" / m / f"fold{k}.npz")["content"] for m in NAMES for k in range(3)}
    assert_refused(capsys, ["tune", *common], "stale", "./run.sh train models=convnext fold=0")
    _in_process("train", *common)
    after = {(m, k): read_meta(out / "oof" / m / f"fold{k}.npz")["content"] for m in NAMES for k in range(3)}
    retrained = {m for (m, k) in before if before[m, k] != after[m, k]}
    assert retrained == {"convnext", "fuse_convnext"}


def test_second_train_skips_finished_folds(finished, run_main):
    root, _ = finished
    proc = run_main("train", f"data_dir={root / 'data'}", f"out_dir={root / 'out'}", "models=tfidf", *TINY)
    assert proc.stderr.count("skipping") == 3


def test_predict_scores_a_new_test_set_without_training(finished, tmp_path, run_main):
    root, _ = finished
    new = tmp_path / "new"
    (new / "data").mkdir(parents=True)
    test = pd.read_csv(root / "data" / "test.csv", dtype=str)
    subset = test.iloc[::2]
    (new / "test.csv").write_text("ImageID,Caption\n" + "".join(
        f'{i},"{c}"\n' for i, c in zip(subset["ImageID"], subset["Caption"].str.replace('"', '""'))))
    for image_id in subset["ImageID"]:
        (new / "data" / image_id).write_bytes((root / "data" / "data" / image_id).read_bytes())
    out_copy = tmp_path / "out"
    subprocess.run(["cp", "-r", str(root / "out"), str(out_copy)], check=True)
    submitted = (out_copy / "submissions" / "submission.csv").read_bytes()
    proc = run_main("predict", f"data_dir={new}", f"out_dir={out_copy}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1/" not in proc.stderr  # no training happened
    written = list((out_copy / "submissions").glob("predict-new-*.csv"))  # named after its input
    assert len(written) == 1 and f"predict: wrote {written[0]}" in proc.stderr
    assert (out_copy / "submissions" / "submission.csv").read_bytes() == submitted  # the competition's, untouched
    sub = pd.read_csv(written[0], dtype=str, keep_default_na=False)
    assert sub["ImageID"].tolist() == subset["ImageID"].tolist()
    assert all(sub["Labels"])


def test_infer_reproduces_every_models_saved_test_predictions(finished):
    """What predict runs (each model's infer on the saved fold weights) gives what training saved."""
    root, _ = finished
    cfg = build_config([f"data_dir={root / 'data'}", f"out_dir={root / 'out'}", "num_workers=0"])
    comp = load_test_only(cfg.data_dir)
    upstream = {}
    for model in NAMES:
        resolved = recorded_model(cfg, read_record(cfg, model, 1))
        store = resolved.spec.store(resolved, ImageSource(cfg, comp, (comp.test,)))
        job = FoldJob(resolved.cfg, comp, np.zeros(0, int), 1, model, {}, store)
        upstream[model] = resolved.spec.infer(job, comp.test, upstream)
        saved = load_arrays(oof_path(cfg, model, 1))[1]["test_probs"]
        np.testing.assert_array_equal(np.asarray(upstream[model][0], np.float32), saved, err_msg=model)


def _predicted(out: Path) -> Path:
    """The one file predict wrote under out/submissions (named after its data_dir and test.csv)."""
    written = list((out / "submissions").glob("predict-*.csv"))
    assert len(written) == 1, written
    return written[0]


def _in_process(*args) -> None:
    """The CLI in this process (no interpreter start-up per call); exit 0 is required."""
    assert cli_main([str(a) for a in args]) == 0, args


@pytest.mark.parametrize("blend", ["mean", "rank"])
@pytest.mark.parametrize("decision", ["thresholds", "expected_f1"])
def test_predict_on_the_training_test_csv_reproduces_the_submission(finished, tmp_path, blend, decision):
    """predict rebuilds every fold model from its checkpoint record; on test.csv it must equal submit exactly."""
    root, _ = finished
    out = Path(shutil.copytree(root / "out", tmp_path / "out"))
    common = [*every_model(root), f"out_dir={out}", f"tune.blend={blend}", f"tune.decision={decision}"]
    _in_process("tune", *common)
    _in_process("submit", *common)
    if blend == "rank":  # report checks its per-model label sets reproduce tune's in-sample scores
        _in_process("report", *common)
    submitted = (out / "submissions" / "submission.csv").read_text()
    _in_process("predict", f"data_dir={root / 'data'}", f"out_dir={out}", "num_workers=0")
    assert _predicted(out).read_text() == submitted


def assert_refused(capsys, args: list, *needles: str) -> None:
    """The in-process CLI exits 2 and its last stderr line is the one-line error naming every needle."""
    capsys.readouterr()
    assert cli_main([str(a) for a in args]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(n in line for n in needles), line


def test_predict_refuses_a_model_retrained_after_tune(finished, tmp_path, capsys):
    root, _ = finished
    out = Path(shutil.copytree(root / "out", tmp_path / "out"))
    common = [f"data_dir={root / 'data'}", f"out_dir={out}", *TINY]
    _in_process("train", *common, "models=tfidf", "fold=0", "text.tfidf_c=0.5")
    assert_refused(capsys, ["predict", *common[:2]], "tfidf fold 0 was retrained after ./run.sh tune", "rerun ./run.sh tune")
    submission = "submissions/submission.csv"
    assert (out / submission).read_text() == (root / "out" / submission).read_text()  # the refusal wrote nothing


def test_fusion_is_stale_when_an_upstream_fold_is_retrained(finished, tmp_path, capsys):
    """fusion's provenance holds the content hashes of the features it stacked on: predict and tune both refuse."""
    root, _ = finished
    out = Path(shutil.copytree(root / "out", tmp_path / "out"))
    common = [f"data_dir={root / 'data'}", f"out_dir={out}", *TINY]
    _in_process("tune", *common, "models=fusion")
    _in_process("train", *common, "models=bilstm", "fold=2", "text.hidden=8")
    assert_refused(capsys, ["predict", *common[:2]], "fusion fold 2 stacks on bilstm features that were retrained since",
                   "models=fusion fold=2")
    assert_refused(capsys, ["tune", *common, "models=fusion", "text.hidden=8"], "stale", "./run.sh train models=fusion fold=")


def test_changed_settings_make_old_oof_stale(finished, tmp_path, run_main):
    root, _ = finished
    out_copy = tmp_path / "out"
    subprocess.run(["cp", "-r", str(root / "out"), str(out_copy)], check=True)
    proc = run_main("tune", f"data_dir={root / 'data'}", f"out_dir={out_copy}", "models=resnet50,bilstm,tfidf,fusion",
                    *TINY, "text.max_len=5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and "stale" in line and "./run.sh train models=bilstm" in line


def test_kill_during_training_then_resume(tmp_path, run_main):
    make_dataset(tmp_path / "data", n_train=400, n_test=20, images=False)
    args = ["train", f"data_dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'out'}", "models=bilstm", "n_folds=2",
            "fold=0", "num_workers=0", "text.epochs=15", "patience=100", "text.batch_size=8"]
    last = tmp_path / "out" / "checkpoints" / "bilstm" / "fold0.partial" / "last.pt"  # where an unfinished fold trains
    proc = subprocess.Popen([sys.executable, "-m", "solution", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not last.exists():
        time.sleep(0.2)
    assert last.exists(), "no epoch finished in time"
    time.sleep(0.5)  # now mid-epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out" / "oof" / "bilstm" / "fold0.npz").exists()
    (last.parent / ".last.pt.killed.tmp").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    resumed = run_main(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch" in resumed.stderr
    first_epoch = int(resumed.stderr.split("resuming after epoch ")[1].split()[0])
    assert first_epoch >= 1
    assert f"epoch {first_epoch + 1}/15" in resumed.stderr and "epoch 1/15:" not in resumed.stderr
    assert (tmp_path / "out" / "oof" / "bilstm" / "fold0.npz").exists()
    assert not list((tmp_path / "out").rglob("*.tmp"))


@pytest.mark.parametrize("retrain", ["force=true", "text.hidden=8"], ids=["force", "changed-settings"])
def test_a_retrain_cut_short_leaves_the_finished_fold_to_predict_until_the_new_one_is_done(tmp_path, capsys, monkeypatch,
                                                                                          retrain):
    """A retrain trains in checkpoints/<model>/fold<k>.partial/ and replaces the finished fold only once it is
    complete: killed after an epoch, predict still writes the submission it wrote before, and the same
    command resumes the retrain and completes it."""
    import solution.trainer as trainer

    make_dataset(tmp_path / "data", n_train=40, n_test=8, images=False)
    out = tmp_path / "out"
    common = [f"data_dir={tmp_path / 'data'}", f"out_dir={out}", "models=bilstm", "n_folds=2", "num_workers=0",
              "text.vectors=none", "text.epochs=3", "patience=10", "tune.trials=2", "tune.threshold_trials=2"]
    for stage in ("train", "tune", "submit"):
        _in_process(stage, *common)
    submission, finished = out / "submissions" / "submission.csv", out / "checkpoints" / "bilstm" / "fold0"
    submitted, record = submission.read_text(), json.loads((finished / "fold.json").read_text())
    real_save = trainer.save_checkpoint

    def killed_after_epoch_1(path, obj):
        real_save(path, obj)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", killed_after_epoch_1)
    assert cli_main(["train", *common, "fold=0", retrain]) == 130
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    assert json.loads((finished / "fold.json").read_text()) == record
    _in_process("predict", *common[:2], "num_workers=0")
    assert _predicted(submission.parents[1]).read_text() == submitted
    capsys.readouterr()
    _in_process("train", *common, "fold=0", retrain)
    assert "bilstm fold 0: resuming after epoch 1" in capsys.readouterr().err
    assert not finished.with_name("fold0.partial").exists() and not finished.with_name("fold0.old").exists()
    retrained = json.loads((finished / "fold.json").read_text())
    if retrain == "force=true":  # the same settings and seed: the same fold again
        assert retrained["oof"] == record["oof"] and retrained["files"] == record["files"]
    else:
        assert retrained["config"]["text"]["hidden"] == 8 and retrained["oof"] != record["oof"]


def test_fold_outside_range_is_one_line_naming_fold(tmp_path):
    proc = cli("train", f"data_dir={tmp_path}", "fold=7", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "fold" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "coco-mini" / "train.csv").exists(),
                    reason="../shared/data/coco-mini is not here (it exists only in the project's workspace)")
def test_image_model_smoke_on_real_coco_photos(tmp_path):
    data = REPO.parent / "shared" / "data" / "coco-mini"
    _in_process("train", f"data_dir={data}", f"out_dir={tmp_path}", "models=resnet50", "n_folds=2", "fold=0..1",
                "image.model=test_resnet", "image.size=48", "image.pretrained=false", "image.epochs=1", "num_workers=0")
    for k in (0, 1):
        assert (tmp_path / "oof" / "resnet50" / f"fold{k}.npz").exists()


def test_threshold_decision_submits_and_a_changed_decision_needs_a_new_tune(finished, tmp_path, capsys):
    root, _ = finished
    out_copy = Path(shutil.copytree(root / "out", tmp_path / "out"))
    common = [f"data_dir={root / 'data'}", f"out_dir={out_copy}", "models=resnet50,bilstm,tfidf,fusion", *TINY]
    _in_process("tune", *common, "tune.decision=thresholds")
    record = json.loads((out_copy / "oof" / "blend.json").read_text())
    assert record["decision"] == "thresholds"
    assert record["f1"]["samples_f1_nested"] == record["by_decision"]["thresholds"]["samples_f1_nested"]
    assert_refused(capsys, ["submit", *common], "tune.decision=thresholds", "rerun ./run.sh tune")  # default: expected_f1
    _in_process("submit", *common, "tune.decision=thresholds")
    sub = pd.read_csv(out_copy / "submissions" / "submission.csv", dtype=str, keep_default_na=False)
    assert len(sub) == 25 and all(sub["Labels"])


def test_holdout_scores_an_unseen_slice(tmp_path, run_main):
    make_dataset(tmp_path / "data", n_train=120, n_test=10, images=False)
    proc = run_main("holdout", f"data_dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'out'}", "models=tfidf",
                    "n_folds=3", "num_workers=0", "tune.trials=4", "tune.threshold_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "holdout" / "result.json").read_text())
    kept = pd.read_csv(tmp_path / "out" / "holdout" / "data" / "train.csv", dtype=str)
    assert result["held_back_rows"] + len(kept) == 120 and 20 <= result["held_back_rows"] <= 28
    assert 0 < result["held_back_samples_f1"] <= 1
    assert abs(result["nested_estimate"] - result["held_back_samples_f1"] - result["gap_nested_minus_held_back"]) < 1e-9
    assert "held-back samples-F1" in proc.stderr
