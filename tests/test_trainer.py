"""trainer: flip TTA, the lazy loss check, image.compile and the loader's worker hook."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from solution.settings import build_config
from solution.errors import UserError
from solution.trainer import ArrayRows, LossTally, fit, load_checkpoint, make_loader, predict


class Probe(nn.Module):
    """Features: the image's left-column sum, then the token ids as they arrived."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(5, 18)

    def embed(self, image, ids):
        return torch.cat([image[:, :, :, 0].float().sum(dim=(1, 2))[:, None], ids.float()], dim=1)


def test_flip_tta_flips_the_image_and_keeps_the_caption_order():
    image = np.zeros((2, 3, 4, 4), np.uint8)
    image[:, :, :, 0] = 1  # left column lit: flipped, the left column is dark
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 0]])
    loader, _ = make_loader(ArrayRows([image, ids], None), 2, build_config(["num_workers=0"]), shuffle=False)
    _, feats = predict(Probe(), loader, torch.device("cpu"), tta_flip=True)
    np.testing.assert_allclose(feats[:, 0], [6.0, 6.0])  # mean of 12 (original) and 0 (flipped)
    np.testing.assert_allclose(feats[:, 1:], ids)


class Tiny(nn.Module):
    """An image-like network: a `backbone` (what image.compile compiles) and an 18-logit head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 18)

    def embed(self, x):
        return self.backbone(x)


class NaNFromCall(nn.Module):
    """BCE until call `bad`, NaN from then on."""

    def __init__(self, bad: int):
        super().__init__()
        self.bad, self.calls = bad, 0

    def forward(self, logits, target):
        self.calls += 1
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        return loss * float("nan") if self.calls >= self.bad else loss


def fit_tiny(tmp_path, loss_fn, overrides=(), epochs=1):
    """fit() on 256 random rows in batches of 4 (64 steps an epoch), watching the same rows."""
    cfg = build_config([f"out_dir={tmp_path}", "num_workers=0", *overrides])
    job = SimpleNamespace(cfg=cfg, k=0, label="tiny fold 0", ckpt_dir=tmp_path / "ckpt", provenance={})
    job.ckpt_dir.mkdir()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 4)).astype(np.float32), (rng.random((256, 18)) < 0.2).astype(np.float32)
    loader, reseed = make_loader(ArrayRows([x], y), 4, cfg, shuffle=True)
    net = Tiny()
    result = fit(job, net, [{"params": net.parameters(), "lr": 1e-3}], loader, loader, y, loss_fn, epochs, reseed)
    return job, net, result


def test_a_nan_loss_between_checks_stops_naming_its_step_before_any_checkpoint(tmp_path):
    """The loss is read every LossTally.CHECK_EVERY steps and at the epoch's end: step 60 of 64 is between."""
    assert LossTally.CHECK_EVERY < 60
    with pytest.raises(UserError, match=r"^tiny fold 0: loss is nan at epoch 1 step 60; ") as info:
        fit_tiny(tmp_path, NaNFromCall(bad=60))
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "ckpt").iterdir())  # the spoilt weights were never saved


def test_the_mean_training_loss_weighs_every_row_once_across_checks():
    tally = LossTally("x", 1)
    for step, (loss, rows) in enumerate([(0.5, 4), (1.0, 4), (2.0, 2)] * 30, start=1):
        tally.add(step, torch.tensor(loss), rows)
    tally.check()
    assert tally.seen == 300 and tally.mean == pytest.approx((2 + 4 + 4) * 30 / 300)


def test_image_compile_compiles_the_backbone_and_saves_bare_keys(tmp_path, monkeypatch):
    """torch.compile's default (inductor) backend needs a C compiler and about a minute on this CPU; the
    eager backend runs the same graph capture in seconds."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "eager"}))
    job, net, _ = fit_tiny(tmp_path, nn.BCEWithLogitsLoss(), ["image.compile=true"])
    assert net.backbone._compiled_call_impl is not None
    saved = load_checkpoint(job.ckpt_dir / "best.pt")["model"]
    assert sorted(saved) == sorted(Tiny().state_dict())  # no _orig_mod. prefixes


class OpenCVThreads(torch.utils.data.Dataset):
    """Reports, from inside the loader's worker, how many threads OpenCV would use."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        import cv2

        return cv2.getNumThreads()


def test_loader_workers_hold_opencv_to_one_thread():
    loader, _ = make_loader(OpenCVThreads(), 2, build_config(["num_workers=1"]), shuffle=False)
    assert next(iter(loader)).tolist() == [1, 1]


def test_image_batches_from_workers_repeat_with_the_same_seed(noise_images):
    """The worker hook touches no random state: two loaders with the same seed give the same augmented batches."""
    from solution.images import ImageStore
    from solution.models.image import ImageRows, transforms

    paths = noise_images(8, ".png")
    cfg = build_config(["num_workers=2", "image.size=32"])
    store = ImageStore(None, cfg.image.size)

    def epoch_batches():
        loader, reseed = make_loader(ImageRows(paths, np.zeros((8, 18)), store, transforms(cfg, True)), 4, cfg, True)
        reseed(7)
        return [inputs[0] for inputs, _ in loader]

    first, second = epoch_batches(), epoch_batches()
    assert all(torch.equal(a, b) for a, b in zip(first, second)) and len(first) == 2
