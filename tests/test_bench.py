"""bench: the loader ceiling measures, and its rows land between the markers of BENCHMARKS.md."""
import numpy as np
import torch

from solution import bench
from solution.settings import build_config
from solution.images import ImageStore
from solution.models.image import ImageRows, transforms


def test_loader_rate_is_positive_on_a_few_tiny_images(tmp_path, noise_images):
    paths = noise_images(12)
    cfg = build_config(["image.size=32", "image.batch_size=4", "device=cpu"])
    store = ImageStore(tmp_path / "cache", cfg.image.size)
    store.prepare(paths, 1, skip_bad=False)
    rows = ImageRows(paths, np.zeros((12, 18), np.float32), store, transforms(cfg, True))
    for workers in (0, 1):
        assert bench.loader_rate(cfg, rows, workers, torch.device("cpu"), passes=2) > 0


def test_loader_rows_have_no_inference_figure(tmp_path):
    cfg = build_config([f"bench.file={tmp_path / 'B.md'}", "num_workers=auto"])
    rows = [("resized uint8 cache", 3.5, 14.1, 0.0), ("loader alone (cache), 1 worker", 812.3, None, 0.0)]
    bench._write(cfg, ["device=cpu"], rows, torch.device("cpu"), 96, 16)
    text = (tmp_path / "B.md").read_text()
    table = text.split(bench.MARK_START)[1].split(bench.MARK_END)[0]
    assert "| resized uint8 cache | 3.5 | 14.1 |" in table and "| loader alone (cache), 1 worker | 812.3 | — |" in table
    assert f"{cfg.worker_count()} workers = auto" in table and "`./run.sh bench device=cpu`" in table
