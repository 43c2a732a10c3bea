"""Image decoding (any mode, EXIF orientation) and the resized uint8 cache that makes epochs cheap.

The cache holds every image once, shorter side = round(1.15 x image.size), as raw RGB bytes in one
append-only file plus an index keyed by the source path, size and mtime: a changed image or a new
size is decoded again, never served stale, and an interrupted build resumes where it stopped.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from . import log
from .artefacts import write_json
from .errors import UserError

CACHE_SCALE = 1.15


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, P, CMYK, RGBA, LA, I;16, F) to RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # A fixed scale (16-bit -> 8-bit), not the image's own maximum: a dark image must stay dark.
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32))
        hi = 255.0 if img.mode in ("I", "F") and arr.max() <= 255 else 65535.0
        hi = max(hi, float(arr.max()))  # wider-range I/F images: their maximum maps to white
        img = Image.fromarray((arr * (255.0 / hi)).round().clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_rgb(path: Path, shorter_side: int | None = None) -> np.ndarray:
    """Decode to an RGB uint8 array, optionally resized so the shorter side is `shorter_side`."""
    with Image.open(path) as img:
        if shorter_side and img.format == "JPEG":
            img.draft("RGB", (shorter_side, shorter_side))  # lets libjpeg decode big files at reduced scale
        img = to_rgb(img)
        img.load()
    if shorter_side:
        w, h = img.size
        scale = shorter_side / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return np.asarray(img)


def _signature(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _decode_job(args):
    path, side = args
    try:
        return load_rgb(Path(path), side), None
    except Exception as err:  # any decoder failure is reported by file, never raised in a worker
        return None, f"{type(err).__name__}: {err}"


@dataclass
class BadImage:
    path: Path
    reason: str


class ImageStore:
    """Serves images by path: from the cache when enabled, else decoded from the source file."""

    def __init__(self, cache_dir: Path | None, side: int):
        self.side = side
        self.cache_dir = cache_dir
        self.index: dict[str, list] = {}
        self.blank: set[str] = set()  # images skipped under on_bad_image=skip, served as mid-grey
        self._mm = None
        if cache_dir is not None:
            self.bin_path = cache_dir / f"images_{side}.bin"
            self.index_path = cache_dir / f"images_{side}.json"
            if self.index_path.exists() and self.bin_path.exists():
                self.index = json.loads(self.index_path.read_text())
                size = self.bin_path.stat().st_size
                self.index = {k: v for k, v in self.index.items() if v[0] + v[1] * v[2] * 3 <= size}

    def __getstate__(self):  # DataLoader workers reopen the memmap themselves
        state = dict(self.__dict__)
        state["_mm"] = None
        return state

    def prepare(self, paths: list[Path], workers: int, skip_bad: bool) -> list[BadImage]:
        """Pre-flight: check every image exists and decodes, filling the cache on the way."""
        missing = [p for p in paths if not p.is_file()]
        bad = [BadImage(p, "file not found") for p in missing]
        todo = [p for p in paths if p.is_file() and (self.cache_dir is None or
                                                    self.index.get(str(p.resolve()), [0, 0, 0, ""])[3] != _signature(p))]
        if self.cache_dir is None and todo:
            side = None
        else:
            side = round(CACHE_SCALE * self.side)
        if todo:
            label = "caching images" if self.cache_dir is not None else "checking images"
            jobs = [(str(p), side) for p in todo]
            chunk = max(1, min(64, len(jobs) // (4 * max(workers, 1)) or 1))
            pool = ProcessPoolExecutor(workers) if workers > 1 else None
            results = (map(_decode_job, jobs) if pool is None else pool.map(_decode_job, jobs, chunksize=chunk))
            bin_fh = None
            if self.cache_dir is not None:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                bin_fh = open(self.bin_path, "ab")
            try:
                for n, (path, (arr, err)) in enumerate(tqdm(zip(todo, results), total=len(jobs), desc=label,
                                                             unit="img", dynamic_ncols=True), start=1):
                    if err is not None:
                        bad.append(BadImage(path, err))
                    elif bin_fh is not None:
                        offset = bin_fh.tell()
                        bin_fh.write(np.ascontiguousarray(arr).tobytes())
                        self.index[str(path.resolve())] = [offset, arr.shape[0], arr.shape[1], _signature(path)]
                        if n % 2000 == 0:
                            self._flush(bin_fh)
            finally:
                if bin_fh is not None:
                    self._flush(bin_fh)
                    bin_fh.close()
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
        if bad and not skip_bad:
            first = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise UserError(f"{first.path}: {first.reason}{more}; fix or remove it, or pass on_bad_image=skip")
        self.blank = {str(b.path.resolve()) for b in bad}
        self._mm = None
        return bad

    def _flush(self, bin_fh) -> None:
        bin_fh.flush()
        os.fsync(bin_fh.fileno())
        write_json(self.index_path, self.index)

    def get(self, path: Path) -> np.ndarray:
        key = str(Path(path).resolve())
        if key in self.blank:
            side = round(CACHE_SCALE * self.side)
            return np.full((side, side, 3), 128, dtype=np.uint8)
        entry = self.index.get(key) if self.cache_dir is not None else None
        if entry is None:
            return load_rgb(path, round(CACHE_SCALE * self.side))
        if self._mm is None:
            self._mm = np.memmap(self.bin_path, dtype=np.uint8, mode="r")
        offset, h, w, _ = entry
        return np.asarray(self._mm[offset:offset + h * w * 3]).reshape(h, w, 3)


def report_skipped(bad: list[BadImage], log_path: Path) -> None:
    if not bad:
        return
    log.warn(f"on_bad_image=skip: {len(bad)} image(s) replaced by a blank image; listed in {log_path}")
    for b in bad[:10]:
        log.warn(f"  skipped {b.path}: {b.reason}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("".join(f"{b.path}\t{b.reason}\n" for b in bad))
