"""Image decoding (any mode, EXIF orientation, huge files) and the ImageStore pre-flight scan and cache."""
from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import shutil
import time

import numpy as np
import pytest
from PIL import Image

import solution.cache as cache_module
import solution.images as images
from solution.errors import UserError
from solution.images import CACHE_SCALE, ImageStore, load_rgb, to_rgb

SIDE = 64
CACHED = round(CACHE_SCALE * SIDE)


def solid(path, colour, size=(96, 72), fmt=None):
    Image.new("RGB", size, colour).save(path, format=fmt, quality=95)
    return path


# ---- to_rgb / load_rgb -------------------------------------------------------------------------

def test_grayscale():
    out = np.asarray(to_rgb(Image.new("L", (5, 4), 77)))
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and (out == 77).all()


def test_bilevel():
    out = np.asarray(to_rgb(Image.new("1", (3, 2), 1)))
    assert out.shape == (2, 3, 3) and (out == 255).all()


def test_cmyk():
    out = np.asarray(to_rgb(Image.new("CMYK", (4, 4), (255, 0, 0, 0))))  # pure cyan
    assert out.shape == (4, 4, 3) and out[0, 0].tolist() == [0, 255, 255]


def test_cmyk_jpeg_file(tmp_path):
    Image.new("CMYK", (32, 16), (0, 255, 0, 0)).save(tmp_path / "m.jpg")  # magenta
    out = load_rgb(tmp_path / "m.jpg")
    assert out.shape == (16, 32, 3)
    r, g, b = out.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b > 200


def test_rgba_transparent_pixels_go_white_not_black():
    img = Image.new("RGBA", (4, 2), (10, 20, 30, 0))
    img.putpixel((0, 0), (10, 20, 30, 255))
    out = np.asarray(to_rgb(img))
    assert out.shape == (2, 4, 3) and out[0, 0].tolist() == [10, 20, 30] and out[1, 3].tolist() == [255, 255, 255]


def test_la():
    out = np.asarray(to_rgb(Image.new("LA", (2, 2), (40, 255))))
    assert (out == 40).all()


def test_palette_with_and_without_transparency(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 200, 50, 25] + [0] * 762)
    assert np.asarray(to_rgb(img))[0, 0].tolist() == [200, 50, 25]
    img.save(tmp_path / "p.png", transparency=1)
    assert load_rgb(tmp_path / "p.png")[0, 0].tolist() == [255, 255, 255]


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode.startswith("I")
    out = load_rgb(tmp_path / "ramp.png")
    assert out.shape == (32, 64, 3) and out.dtype == np.uint8
    gray = out[..., 0].ravel().astype(int)
    assert (out[..., 0] == out[..., 2]).all()
    assert gray[0] == 0 and gray[-1] == 255 and (np.diff(gray) >= 0).all()
    assert (gray == 255).mean() < 0.05  # values > 255 do not all clip to white
    assert abs(gray[len(gray) // 2] - 128) <= 2


def test_16_bit_dark_image_stays_dark(tmp_path):
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(tmp_path / "dark.png")
    assert load_rgb(tmp_path / "dark.png").max() <= 5  # 1000 / 65535 of white, not stretched to white


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)  # left half red, right half blue
    arr[:, 40:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_rgb(tmp_path / "rot.jpg")
    assert out.shape == (80, 40, 3)
    top, bottom = out[:30].reshape(-1, 3).mean(axis=0), out[50:].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # the left edge is now the top
    small = load_rgb(tmp_path / "rot.jpg", 20)
    assert small.shape == (40, 20, 3)


def test_huge_jpeg_decodes_small_and_fast(tmp_path, monkeypatch):
    Image.new("RGB", (8000, 6000), (10, 200, 30)).save(tmp_path / "big.jpg", quality=50)
    decoded = []
    real = images.to_rgb
    monkeypatch.setattr(images, "to_rgb", lambda img: decoded.append(img.size) or real(img))
    start = time.perf_counter()
    out = load_rgb(tmp_path / "big.jpg", CACHED)
    assert time.perf_counter() - start < 5.0
    assert decoded == [(1000, 750)]  # libjpeg decoded at 1/8 scale (draft), not all 48 megapixels
    assert out.shape == (CACHED, round(CACHED * 8000 / 6000), 3)
    assert np.abs(out.reshape(-1, 3).mean(axis=0) - (10, 200, 30)).max() < 8


def test_load_rgb_resizes_the_shorter_side(tmp_path):
    solid(tmp_path / "a.jpg", (90, 90, 90), size=(200, 100))
    assert load_rgb(tmp_path / "a.jpg", 50).shape == (50, 100, 3)
    solid(tmp_path / "b.png", (90, 90, 90), size=(100, 300))
    assert load_rgb(tmp_path / "b.png", 50).shape == (150, 50, 3)


# ---- ImageStore: bad files ---------------------------------------------------------------------

def make_bad(kind: str, path):
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(
            path, quality=90)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "text":
        path.write_text("this is not an image")
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "text"])
def test_bad_image_stops_prepare_naming_the_file(tmp_path, kind):
    good = solid(tmp_path / "good.jpg", (200, 10, 10))
    bad = make_bad(kind, tmp_path / f"bad_{kind}.jpg")
    store = ImageStore(tmp_path / "cache", SIDE)
    with pytest.raises(UserError) as info:
        store.prepare([good, bad], workers=0, skip_bad=False)
    assert str(bad) in str(info.value) and "on_bad_image=skip" in str(info.value)


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated"])
def test_bad_image_is_skipped_and_served_grey(tmp_path, kind):
    good = solid(tmp_path / "good.jpg", (200, 10, 10))
    bad = make_bad(kind, tmp_path / f"bad_{kind}.jpg")
    store = ImageStore(tmp_path / "cache", SIDE)
    skipped = store.prepare([good, bad], workers=0, skip_bad=True)
    assert [b.path for b in skipped] == [bad] and skipped[0].reason
    grey = store.get(bad)
    assert grey.shape == (CACHED, CACHED, 3) and (grey == 128).all()
    real = store.get(good)
    assert min(real.shape[:2]) == CACHED and real[..., 0].mean() > 150


def test_png_saved_as_jpg_is_decoded_not_refused(tmp_path):
    """PIL reads the content, not the extension: a PNG named .jpg is a good image."""
    path = solid(tmp_path / "really_png.jpg", (10, 10, 220), fmt="PNG")
    assert path.read_bytes().startswith(b"\x89PNG")
    store = ImageStore(tmp_path / "cache", SIDE)
    assert store.prepare([path], workers=0, skip_bad=False) == []
    out = store.get(path)
    assert min(out.shape[:2]) == CACHED and out[..., 2].mean() > 200


def test_prepare_without_cache_still_checks(tmp_path):
    good = solid(tmp_path / "good.jpg", (1, 2, 3))
    bad = make_bad("empty", tmp_path / "bad.jpg")
    store = ImageStore(None, SIDE)
    with pytest.raises(UserError, match="bad.jpg"):
        store.prepare([good, bad], workers=0, skip_bad=False)
    assert min(store.get(good).shape[:2]) == CACHED


def test_worker_processes_give_the_same_cache(tmp_path):
    paths = [solid(tmp_path / f"{i}.jpg", (i * 20, 100, 50), size=(80 + i, 60)) for i in range(6)]
    bad = make_bad("empty", tmp_path / "bad.jpg")
    serial = ImageStore(tmp_path / "c1", SIDE)
    parallel = ImageStore(tmp_path / "c2", SIDE)
    assert [b.path for b in serial.prepare(paths + [bad], workers=0, skip_bad=True)] == [bad]
    assert [b.path for b in parallel.prepare(paths + [bad], workers=2, skip_bad=True)] == [bad]
    for p in paths:
        np.testing.assert_array_equal(serial.get(p), parallel.get(p))


# ---- ImageStore: the cache ---------------------------------------------------------------------

@pytest.fixture
def counted_decodes(monkeypatch):
    calls = []
    real = images._decode_job

    def counting(args):
        calls.append(args[0])
        return real(args)

    monkeypatch.setattr(images, "_decode_job", counting)
    return calls


def test_cache_is_filled_once_and_reused(tmp_path, counted_decodes):
    paths = [solid(tmp_path / f"{i}.jpg", (40 * i, 60, 90)) for i in range(4)]
    cache = tmp_path / "cache"
    store = ImageStore(cache, SIDE)
    store.prepare(paths, workers=0, skip_bad=False)
    assert len(counted_decodes) == 4
    first = [store.get(p).copy() for p in paths]
    np.testing.assert_array_equal(first[2], load_rgb(paths[2], CACHED))
    index = json.loads((cache / f"images_{SIDE}.json").read_text())
    size = (cache / f"images_{SIDE}.bin").stat().st_size
    assert sorted(index) == sorted(str(p.resolve()) for p in paths)

    again = ImageStore(cache, SIDE)  # a new run: the index is read back from disk
    again.prepare(paths, workers=0, skip_bad=False)
    assert len(counted_decodes) == 4  # nothing decoded the second time
    assert json.loads((cache / f"images_{SIDE}.json").read_text()) == index
    assert (cache / f"images_{SIDE}.bin").stat().st_size == size
    for p, arr in zip(paths, first):
        np.testing.assert_array_equal(again.get(p), arr)


def test_changed_source_image_is_decoded_again(tmp_path, counted_decodes):
    paths = [solid(tmp_path / f"{i}.jpg", (200, 0, 0)) for i in range(3)]
    cache = tmp_path / "cache"
    ImageStore(cache, SIDE).prepare(paths, workers=0, skip_bad=False)
    assert len(counted_decodes) == 3

    solid(paths[1], (0, 0, 200))  # replaced: new bytes and mtime
    st = paths[1].stat()
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    store = ImageStore(cache, SIDE)
    store.prepare(paths, workers=0, skip_bad=False)
    assert counted_decodes[3:] == [str(paths[1])]
    assert store.get(paths[1])[..., 2].mean() > 150 and store.get(paths[1])[..., 0].mean() < 60  # not stale
    assert store.get(paths[0])[..., 0].mean() > 150

    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))  # touched only: checked again
    ImageStore(cache, SIDE).prepare(paths, workers=0, skip_bad=False)
    assert counted_decodes[4:] == [str(paths[2])]


def test_cache_size_is_part_of_the_key(tmp_path, counted_decodes):
    path = solid(tmp_path / "a.jpg", (5, 5, 5), size=(120, 90))
    ImageStore(tmp_path / "cache", SIDE).prepare([path], workers=0, skip_bad=False)
    other = ImageStore(tmp_path / "cache", 32)
    other.prepare([path], workers=0, skip_bad=False)
    assert len(counted_decodes) == 2 and min(other.get(path).shape[:2]) == round(CACHE_SCALE * 32)


def test_truncated_cache_file_is_rebuilt_not_misread(tmp_path, counted_decodes):
    paths = [solid(tmp_path / f"{i}.jpg", (30 * i, 30, 30)) for i in range(3)]
    cache = tmp_path / "cache"
    ImageStore(cache, SIDE).prepare(paths, workers=0, skip_bad=False)
    bin_path = cache / f"images_{SIDE}.bin"
    data = bin_path.read_bytes()
    bin_path.write_bytes(data[:len(data) - 10])  # an interrupted write: the last image is incomplete
    store = ImageStore(cache, SIDE)
    store.prepare(paths, workers=0, skip_bad=False)
    assert counted_decodes[3:] == [str(paths[2])]
    np.testing.assert_array_equal(store.get(paths[2]), load_rgb(paths[2], CACHED))


def test_moved_folder_uses_fresh_entries(tmp_path, counted_decodes):
    src = tmp_path / "a"
    src.mkdir()
    path = solid(src / "x.jpg", (250, 250, 0))
    ImageStore(tmp_path / "cache", SIDE).prepare([path], workers=0, skip_bad=False)
    moved = tmp_path / "b"
    shutil.copytree(src, moved)
    store = ImageStore(tmp_path / "cache", SIDE)
    store.prepare([moved / "x.jpg"], workers=0, skip_bad=False)
    assert counted_decodes == [str(path), str(moved / "x.jpg")]
    assert store.get(moved / "x.jpg")[..., 0].mean() > 200


@pytest.fixture
def counted_loads(monkeypatch):
    """Paths that get() decoded from the source file instead of serving from the cache."""
    calls = []
    real = images.load_rgb
    monkeypatch.setattr(images, "load_rgb", lambda path, side=None: calls.append(str(path)) or real(path, side))
    return calls


def test_reads_resolve_each_spelling_once_and_share_one_entry(tmp_path, monkeypatch, counted_loads):
    paths = [solid(tmp_path / f"{i}.jpg", (60 * i, 20, 200)) for i in range(3)]
    store = ImageStore(tmp_path / "cache", SIDE)
    store.prepare(paths, workers=0, skip_bad=False)
    store.get(paths[0])  # opens the memmap, which resolves the cache file's path once
    resolved = []
    real = pathlib.Path.resolve
    monkeypatch.setattr(pathlib.Path, "resolve", lambda self, *a, **k: resolved.append(self) or real(self, *a, **k))
    for _ in range(3):
        for p in paths:
            store.get(p)
    assert resolved == []  # the per-read cost is a dict look-up, not a resolve()
    link = tmp_path / "link.jpg"
    link.symlink_to(paths[1])
    (tmp_path / "sub").mkdir()
    for spelling in (link, tmp_path / "sub" / ".." / "2.jpg", link):
        store.get(spelling)
    assert len(resolved) == 2  # other spellings reach the same entries, never decoded outside prepare
    assert counted_loads == [str(p) for p in paths]
    np.testing.assert_array_equal(store.get(link), store.get(paths[1]))


def test_cache_miss_is_logged_once_as_the_slow_path(tmp_path, monkeypatch, counted_loads):
    paths = [solid(tmp_path / f"{i}.jpg", (10, 60 * i, 10)) for i in range(3)]
    warnings = []
    monkeypatch.setattr(images.log, "warn", warnings.append)
    store = ImageStore(tmp_path / "cache", SIDE)
    store.prepare(paths[:1], workers=0, skip_bad=False)
    for _ in range(2):
        for p in paths:
            np.testing.assert_array_equal(store.get(p), load_rgb(p, CACHED))
    assert counted_loads == [str(paths[0])] + [str(p) for p in paths[1:]] * 2 and len(warnings) == 1
    assert str(paths[1]) in warnings[0] and "slow path" in warnings[0]
    uncached = ImageStore(None, SIDE)  # decoding every read is what image.cache=false asks for: no warning
    uncached.get(paths[0])
    assert len(warnings) == 1


def test_damaged_cache_index_is_rebuilt_not_a_traceback(tmp_path, monkeypatch):
    paths = [solid(tmp_path / f"{i}.jpg", (30 * i, 20, 90)) for i in range(3)]
    ImageStore(tmp_path / "cache", SIDE).prepare(paths, workers=0, skip_bad=False)
    (tmp_path / "cache" / f"images_{SIDE}.json").write_text('{"half written')
    warnings = []
    monkeypatch.setattr(images.log, "warn", warnings.append)
    store = ImageStore(tmp_path / "cache", SIDE)
    store.prepare(paths, workers=0, skip_bad=False)
    assert warnings and all("unreadable" in w for w in warnings)
    for p in paths:
        np.testing.assert_array_equal(store.get(p), load_rgb(p, CACHED))


def _fill_cache(cache, paths, barrier) -> None:
    """One of several processes filling the same cache: all start together and take the lock image by image."""
    images.BATCH_BYTES = 1
    store = ImageStore(cache, SIDE)
    barrier.wait()
    assert store.prepare(paths, workers=0, skip_bad=False) == []


@pytest.mark.parametrize("shares", [((0, 30), (10, 40)), ((0, 40), (0, 40), (0, 40))], ids=["overlapping", "same"])
def test_concurrent_writers_share_one_consistent_cache(tmp_path, shares):
    paths = [solid(tmp_path / f"{i}.jpg", (6 * i, 250 - 6 * i, 37 * i % 256), size=(60 + i, 50 + 7 * i % 30))
             for i in range(40)]
    cache = tmp_path / "cache"
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(len(shares))
    writers = [fork.Process(target=_fill_cache, args=(cache, paths[a:b], barrier)) for a, b in shares]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [w.exitcode for w in writers] == [0] * len(writers)
    index = json.loads((cache / f"images_{SIDE}.json").read_text())
    assert sorted(index) == sorted(str(p.resolve()) for p in paths)
    spans = sorted((offset, offset + h * w * 3) for offset, h, w, _ in index.values())
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))  # no two entries share bytes
    assert (cache / f"images_{SIDE}.bin").stat().st_size == sum(end - start for start, end in spans)  # each once
    store = ImageStore(cache, SIDE)
    for p in paths:
        np.testing.assert_array_equal(store.get(p), load_rgb(p, CACHED))


def test_a_file_system_without_locks_is_a_user_error(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(cache_module.fcntl, "flock", no_locks)
    store = ImageStore(tmp_path / "cache", SIDE)
    with pytest.raises(UserError, match="images_64.lock.*No locks available.*image.cache=false"):
        store.prepare([solid(tmp_path / "a.jpg", (1, 2, 3))], workers=0, skip_bad=False)
