"""The fine-tuning recipe: accumulation, the update schedule, layer decay, EMA, mixing, stochastic depth, the head
probe, and a fold interrupted mid-run that resumes with the same EMA, schedule and accumulation state."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from solution.settings import build_config
from solution.errors import UserError
from solution.recipe import Recipe, image_recipe
from solution.recipe.ema import EmaWeights
from solution.recipe.layer_decay import backbone_groups
from solution.recipe.mixing import Mixer
from solution.recipe.probe import fit_linear_head
from solution.recipe.schedule import UpdateSchedule
from solution.recipe.updates import Updater
from solution.trainer import ArrayRows, fit, load_checkpoint, make_loader

CPU = torch.device("cpu")


def _convnext_net():
    """A BN-free image network (test_convnext normalises with LayerNorm), seeded."""
    import timm

    from solution.models.image import ImageNet

    torch.manual_seed(0)
    return ImageNet(timm.create_model("test_convnext", pretrained=False, num_classes=0))


def _one_update(rows_per_micro_batch: int, accum: int, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, int]:
    """The weights after one update made of `accum` micro-batches, and the updates the schedule saw."""
    net = _convnext_net().train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)  # Adam's first step is about lr * sign(g): it would hide a
    schedule = UpdateSchedule(optimizer, total=10, warmup=0, per_epoch=1)  # wrongly scaled sum, as clipping would
    updater = Updater(net, optimizer, torch.amp.GradScaler("cuda", enabled=False), nn.BCEWithLogitsLoss(), CPU,
                      batches=accum, accum_steps=accum, schedule=schedule)
    for i in range(accum):
        rows = slice(i * rows_per_micro_batch, (i + 1) * rows_per_micro_batch)
        updater.step(i, (x[rows],), y[rows])
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, schedule.updates


def test_four_accumulated_micro_batches_of_16_update_as_one_batch_of_64():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = (torch.rand(64, 18, generator=g) < 0.3).float()
    whole, whole_updates = _one_update(64, 1, x, y)
    accumulated, accumulated_updates = _one_update(16, 4, x, y)
    start = _convnext_net().state_dict()
    assert whole_updates == accumulated_updates == 1
    assert any(not torch.equal(whole[k], start[k]) for k in whole)  # the update moved the weights
    for k in whole:
        torch.testing.assert_close(accumulated[k], whole[k], rtol=1e-5, atol=1e-6)


def test_an_epochs_last_short_group_is_one_update_of_its_own():
    updater = Updater(nn.Linear(1, 1), None, None, None, CPU, batches=10, accum_steps=4)
    assert [updater._group(i) for i in (0, 3, 7, 8, 9)] == [(4, False), (4, True), (4, True), (2, False), (2, True)]
    assert updater.updates_per_epoch() == 3


def _schedule(total=100, warmup=10, per_epoch=10, frozen=2):
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0},
              {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1, "frozen_epochs": frozen}]
    optimizer = torch.optim.SGD(groups, lr=1.0)
    return optimizer, UpdateSchedule(optimizer, total, warmup, per_epoch)


def _lrs(optimizer) -> list[float]:
    return [g["lr"] for g in optimizer.param_groups]


def test_the_rate_at_the_first_update_the_end_of_warm_up_and_the_last_update():
    optimizer, schedule = _schedule()
    assert _lrs(optimizer) == pytest.approx([1 / 11, 0.0])  # update 0: a first step, never zero; the backbone waits
    for _ in range(10):
        schedule.after_update()
    assert _lrs(optimizer) == pytest.approx([1.0, 0.0])  # warm-up done: the base rate
    for _ in range(10):
        schedule.after_update()
    assert _lrs(optimizer) == pytest.approx([0.5 * (1 + math.cos(math.pi * 10 / 90)), 0.1 / 11])  # unfrozen: its warm-up
    for _ in range(79):
        schedule.after_update()
    assert schedule.updates == 99  # the last update of 100
    assert _lrs(optimizer) == pytest.approx([0.5 * (1 + math.cos(math.pi * 89 / 90)),
                                             0.1 * 0.5 * (1 + math.cos(math.pi * 69 / 70))])
    assert 0 < optimizer.param_groups[0]["lr"] < 1e-3  # cosine to zero


def test_the_schedule_resumes_mid_run_on_a_fresh_optimizer():
    optimizer, schedule = _schedule()
    for _ in range(37):
        schedule.after_update()
    saved = schedule.state_dict()
    fresh_optimizer, fresh = _schedule()
    fresh.load_state_dict(saved)
    assert fresh.updates == 37 and _lrs(fresh_optimizer) == _lrs(optimizer)


def test_warm_up_is_counted_in_epochs_of_updates():
    optimizer, _ = _schedule()
    schedule = Recipe(per_update=True, warmup=1.5).schedule("cosine", optimizer, epochs=4, updates_per_epoch=10)
    assert schedule.total == 40 and schedule.warmup == 15


def _rates(backbone, decay=0.5) -> dict[str, float]:
    groups = backbone_groups(backbone, 1.0, decay)
    return {id(p): g["lr"] for g in groups for p in g["params"]}


@pytest.mark.parametrize("name, stem, last_block, blocks", [
    ("test_resnet", "conv1.0.weight", "layer4.0.conv1.weight", 5),
    ("test_vit", "patch_embed.proj.weight", "blocks.5.attn.qkv.weight", 7),
])
def test_layer_decay_gives_the_stem_and_the_last_block_their_rates(name, stem, last_block, blocks):
    import timm

    backbone = timm.create_model(name, pretrained=False, num_classes=0)
    params = dict(backbone.named_parameters())
    rates = _rates(backbone)
    assert rates[id(params[last_block])] == 0.5  # depth 1: the head's rate times decay
    assert rates[id(params[stem])] == 0.5 ** blocks  # the deepest
    assert len(rates) == len(params)  # every parameter in exactly one group
    assert all(r == 1.0 for r in _rates(backbone, decay=1.0).values())  # 1 = off


def test_ema_equals_its_closed_form_over_a_known_sequence_of_weights():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in net.state_dict().items()}
    ema = EmaWeights(net, decay=0.5)  # the warm-up (1+t)/(10+t) holds for t < 8, then 0.5
    g = torch.Generator().manual_seed(0)
    seen = []
    for t in range(20):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            net[1].num_batches_tracked.fill_(t)
        seen.append({k: v.clone() for k, v in net.state_dict().items()})
        ema.update(net)
    decays = [min(0.5, (1 + t) / (10 + t)) for t in range(20)]
    for key in ("0.weight", "0.bias", "1.weight", "1.running_mean"):
        expected = math.prod(decays) * start[key]
        for t, weights in enumerate(seen):
            expected = expected + (1 - decays[t]) * math.prod(decays[t + 1:]) * weights[key]
        torch.testing.assert_close(ema.net.state_dict()[key], expected, rtol=1e-5, atol=1e-6)
    assert ema.net.state_dict()["1.num_batches_tracked"] == 19  # integers are copied, not averaged
    assert ema.updates == 20 and not any(p.requires_grad for p in ema.net.parameters())


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0)], ids=["mixup", "cutmix"])
def test_mixed_targets_are_the_convex_combination_of_the_two_rows_images_share(mixup, cutmix):
    """Row i is an image of the constant i + 1 with label i alone: the target says which two rows were mixed and
    with which weight, and the image must be mixed with that same weight."""
    n = 18
    images = (torch.arange(n, dtype=torch.uint8) + 1).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    target = torch.eye(n)
    mixer = Mixer(mixup, cutmix)
    for seed in range(5):
        mixer.reseed(seed)
        mixed, soft = mixer(images, target)
        assert torch.allclose(soft.sum(1), torch.ones(n)) and (soft >= 0).all()
        for i in range(n):
            own = soft[i, i].item()
            other = [j for j in range(n) if j != i and soft[i, j] > 0]
            if not other:  # mixed with itself (or the box was empty)
                assert torch.equal(mixed[i], images[i].float()) or own == pytest.approx(1.0)
                continue
            (j,) = other
            assert own + soft[i, j].item() == pytest.approx(1.0)
            if cutmix:  # pixels are either row i's or row j's, in the target's shares
                assert set(mixed[i].unique().tolist()) <= {i + 1.0, j + 1.0}
                assert (mixed[i] == j + 1).float().mean().item() == pytest.approx(1 - own)
            else:
                assert torch.allclose(mixed[i], torch.full_like(mixed[i], own * (i + 1) + (1 - own) * (j + 1)))


def test_drop_path_reaches_timm_and_a_backbone_without_it_is_refused_in_one_line():
    from timm.layers import DropPath

    from solution.models.image import build_backbone

    cfg = build_config(["image.model=test_resnet", "image.pretrained=false", "image.drop_path=0.2"])
    rates = [m.drop_prob for m in build_backbone(cfg).modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.2)
    cfg = build_config(["image.model=vgg11", "image.pretrained=false", "image.drop_path=0.2"])
    with pytest.raises(UserError, match=r"^bad value for image.drop_path: 0.2; vgg11 has no stochastic depth"):
        build_backbone(cfg)


def test_the_probe_fits_a_head_that_separates_the_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    y = (x > 0.3).astype(np.float32)  # 12 labels, each one feature above a threshold
    y = np.concatenate([y, np.zeros((300, 18 - y.shape[1]), np.float32)], axis=1)
    y[:, 17] = 1  # a label on every row
    head = nn.Linear(12, 18)
    penalty = fit_linear_head(head, x[:250], y[:250], x[250:], y[250:], nn.BCEWithLogitsLoss(), "probe")
    with torch.no_grad():
        predicted = (head(torch.from_numpy(x[250:])) > 0).numpy()
    assert penalty > 0 and (predicted == y[250:].astype(bool)).mean() > 0.95


class ImageLike(nn.Module):
    """A small network on 3 x 8 x 8 images (mixup and cutmix apply), with a backbone and an 18-logit head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU())
        self.head = nn.Linear(16, 18)

    def embed(self, x):
        return self.backbone(x.float() / 255)


def _fit_image_like(tmp_path, interrupt_after: int | None = None):
    """3 epochs of the image recipe (warm-up, 3 micro-batches per update, EMA, mixup and cutmix, a head fitted
    first) on 60 rows in batches of 4; interrupt_after=e stops the run once epoch e's last.pt is written."""
    import solution.trainer as trainer

    cfg = build_config([f"out_dir={tmp_path}", "num_workers=0", "patience=10", "image.warmup=1.5", "image.accum_steps=3",
                        "image.ema=0.9", "image.mixup=0.4", "image.cutmix=1.0"])
    job = SimpleNamespace(cfg=cfg, k=0, label="tiny fold 0", ckpt_dir=tmp_path / "ckpt", provenance={"x": 1})
    job.ckpt_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 3, 8, 8)).astype(np.uint8)
    y = (rng.random((60, 18)) < 0.3).astype(np.float32)
    loader, reseed = make_loader(ArrayRows([x], y), 4, cfg, shuffle=True)
    torch.manual_seed(0)
    net = ImageLike()
    probes = []

    def head_init(net, device):
        probes.append(1)
        nn.init.zeros_(net.head.weight)

    groups = [*backbone_groups(net.backbone, 1e-2, 0.8, frozen_epochs=1), {"params": net.head.parameters(), "lr": 1e-2}]
    real_save = trainer.save_checkpoint

    def save(path, obj):
        real_save(path, obj)
        if interrupt_after is not None and path.name == "last.pt" and obj["epoch"] == interrupt_after:
            raise KeyboardInterrupt

    trainer.save_checkpoint = save
    try:
        fit(job, net, groups, loader, loader, y, nn.BCEWithLogitsLoss(), 3, reseed,
            recipe=image_recipe(cfg.image, head_init))
    finally:
        trainer.save_checkpoint = real_save
    return load_checkpoint(job.ckpt_dir / "last.pt"), load_checkpoint(job.ckpt_dir / "best.pt"), probes


def _same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _same(u, v)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def test_a_fold_interrupted_mid_run_resumes_with_the_same_ema_schedule_and_accumulation(tmp_path):
    last, best, probes = _fit_image_like(tmp_path / "whole")
    assert probes == [1] and last["epoch"] == 3
    assert last["scheduler"]["updates"] == last["ema"]["updates"] == 3 * 5  # 15 batches an epoch: 5 updates of 3
    assert not torch.equal(last["ema"]["weights"]["head.weight"], last["model"]["head.weight"])
    with pytest.raises(KeyboardInterrupt):
        _fit_image_like(tmp_path / "cut", interrupt_after=1)
    cut_last, cut_best = (load_checkpoint(tmp_path / "cut" / "ckpt" / f) for f in ("last.pt", "best.pt"))
    _same(cut_best["model"], cut_last["ema"]["weights"])  # early stopping kept the averaged weights
    assert not torch.equal(cut_best["model"]["head.weight"], cut_last["model"]["head.weight"])
    resumed_last, resumed_best, resumed_probes = _fit_image_like(tmp_path / "cut")
    assert resumed_probes == []  # a resumed fold keeps its head: no second probe
    for key in ("model", "optimizer", "scheduler", "scaler", "ema", "epoch", "best_f1", "best_epoch"):
        _same(resumed_last[key], last[key])
    _same(resumed_best["model"], best["model"])
