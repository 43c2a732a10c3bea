"""The frozen-backbone embeddings (models/embed.py): one pass per image, cached per image and shared by processes.

A tiny random timm backbone stands in for a real one: what is checked is the cache, not the features (the
end-to-end run in test_pipeline embeds with the real EfficientNet-Lite0 weights, and test_pretrained checks
those weights' features against their reference code).
"""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from solution.settings import build_config
from solution.models import embed
from solution.models.image import load_backbone

SIDE = 32


def _setup(out: Path, *extra: str):
    cfg = build_config([f"out_dir={out}", "embed.model=test_resnet", "embed.pretrained=false", f"embed.size={SIDE}",
                        "embed.batch_size=4", "num_workers=0", "device=cpu", *extra])
    torch.manual_seed(0)  # the same random backbone in every process: the same weights, so the same cache
    net = embed.FrozenNet(load_backbone(cfg.embed, "embed"))
    return cfg, net, embed.preprocessing(net.backbone, cfg.embed.size)


def _arrays(found: embed.Embeddings, paths) -> np.ndarray:
    return found.matrix(paths)


def test_a_second_run_decodes_and_embeds_nothing(tmp_path, noise_images, monkeypatch, caplog):
    paths = noise_images(10)
    cfg, net, prep = _setup(tmp_path / "out")
    first = embed.Embeddings(cfg, net, prep)
    first.fill(paths)
    want = _arrays(first, paths)
    assert want.shape == (10, net.backbone.num_features) and np.isfinite(want).all()

    def fail(*args, **kwargs):
        raise AssertionError("decoded or embedded again")

    monkeypatch.setattr(embed.ImageStore, "prepare", fail)
    monkeypatch.setattr(embed.FrozenNet, "embed", fail)
    again = embed.Embeddings(cfg, *_setup(tmp_path / "out")[1:])
    with caplog.at_level("INFO", logger="solution"):
        again.fill(paths)
    assert "nothing decoded or embedded" in caplog.text
    np.testing.assert_array_equal(_arrays(again, paths), want)


def test_a_changed_image_is_embedded_again(tmp_path, noise_images):
    paths = noise_images(8)
    cfg, net, prep = _setup(tmp_path / "out")
    found = embed.Embeddings(cfg, net, prep)
    before = _arrays(found, paths)
    size = found.cache.bin_path.stat().st_size
    from PIL import Image

    Image.new("RGB", (48, 40), (250, 10, 10)).save(paths[3])  # another image under the same name
    after = _arrays(embed.Embeddings(cfg, net, prep), paths)
    changed = [i for i in range(8) if not np.array_equal(before[i], after[i])]
    assert changed == [3]
    assert found.cache.bin_path.stat().st_size == size + before[0].nbytes  # its batch-mates are not stored twice


def test_a_damaged_index_is_rebuilt_with_the_same_arrays(tmp_path, noise_images):
    paths = noise_images(6)
    cfg, net, prep = _setup(tmp_path / "out")
    found = embed.Embeddings(cfg, net, prep)
    want = _arrays(found, paths)
    found.cache.index_path.write_text('{"truncated": [0, ')
    np.testing.assert_array_equal(_arrays(embed.Embeddings(cfg, net, prep), paths), want)


def test_another_backbone_weight_or_size_is_another_cache(tmp_path):
    cfg, net, prep = _setup(tmp_path / "out")
    stem = embed.Embeddings(cfg, net, prep).cache.bin_path.name
    assert embed.Embeddings(cfg, net, {**prep, "side": SIDE + 8}).cache.bin_path.name != stem
    assert embed.Embeddings(*_setup(tmp_path / "out", "embed.flip=false")).cache.bin_path.name != stem
    with torch.no_grad():
        next(net.backbone.parameters()).add_(1e-3)
    assert embed.Embeddings(cfg, net, prep).cache.bin_path.name != stem  # weights by content
    assert embed.Embeddings(*_setup(tmp_path / "out", "embed.flip=false")).cache.bin_path.name != stem


def _fill_in_process(out, paths, barrier) -> None:
    cfg, net, prep = _setup(out)
    barrier.wait()  # both processes embed at once
    embed.Embeddings(cfg, net, prep).fill(paths)


@pytest.mark.parametrize("overlap", ["same", "overlapping"])
def test_two_processes_embedding_into_one_cache_give_the_arrays_of_one_process(tmp_path, noise_images, monkeypatch,
                                                                              overlap):
    monkeypatch.setattr(embed, "APPEND_EVERY", 1)  # many small appends, so the two writers interleave
    paths = noise_images(24)
    lists = (paths, paths) if overlap == "same" else (paths[:16], paths[6:])
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_fill_in_process, args=(tmp_path / "shared", part, barrier)) for part in lists]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    cfg, net, prep = _setup(tmp_path / "alone")
    alone = embed.Embeddings(cfg, net, prep)
    alone.fill(paths)
    shared = embed.Embeddings(*_setup(tmp_path / "shared"))
    assert len(shared.cache.index) == len(paths)
    np.testing.assert_array_equal(_arrays(shared, paths), _arrays(alone, paths))


def test_random_weights_come_from_the_seed_so_a_rerun_keys_the_same_cache(tmp_path):
    cfg = _setup(tmp_path / "out")[0]
    assert embed.frozen(cfg).identity == embed.frozen(cfg).identity
    other = build_config([f"out_dir={tmp_path / 'out'}", "embed.model=test_resnet", "embed.pretrained=false",
                          f"embed.size={SIDE}", "seed=7"])
    assert embed.frozen(other).identity != embed.frozen(cfg).identity


def test_predict_refuses_embeddings_of_other_weights_than_training_read():
    from solution.errors import UserError
    from solution.predict import _check_store

    class Store:
        identity = "embed_m_bbbb_1234"

    _check_store(Store(), {"provenance": {"embeddings": "embed_m_bbbb_1234"}}, "lite0")  # the same: fine
    with pytest.raises(UserError, match="lite0 was trained on the embeddings embed_m_aaaa_1234.*models=lite0"):
        _check_store(Store(), {"provenance": {"embeddings": "embed_m_aaaa_1234"}}, "lite0")


def test_out_of_memory_while_embedding_names_embed_batch_size_and_the_variant(tmp_path, noise_images, monkeypatch):
    import solution.trainer as trainer
    from solution.errors import UserError

    cfg, net, prep = _setup(tmp_path / "out", "variant.big.kind=embed", "variant.big.embed.batch_size=4")
    real = embed.FrozenNet.embed

    def embed_small_batches(self, x):
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(self, x)

    monkeypatch.setattr(embed.FrozenNet, "embed", embed_small_batches)
    monkeypatch.setattr(trainer, "gpu_memory", lambda device: "Simulated GPU (8.0 GiB)")
    with pytest.raises(UserError) as info:
        embed.Embeddings(cfg, net, prep, "big").fill(noise_images(6))
    message = str(info.value)
    assert "CUDA out of memory at 4 rows per batch (embed.batch_size=4" in message and "2 rows fit" in message
    assert "embed.batch_size=2 in the declaration of variant big" in message, message


def test_a_backbone_that_cannot_take_the_size_stops_before_anything_in_one_line():
    from solution.errors import UserError

    cfg = build_config(["embed.model=vit_tiny_patch16_224", "embed.pretrained=false", "embed.size=64"])
    with pytest.raises(UserError, match="embed.model=vit_tiny_patch16_224 cannot embed 64 px images.*embed.size=0"):
        embed.preflight(cfg)
    embed.preflight(build_config(["embed.model=vit_tiny_patch16_224", "embed.pretrained=false"]))  # its 224 px: fine
