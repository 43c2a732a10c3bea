"""A synthetic dataset in the competition's exact format, and the `demo` command that runs the pipeline on it.

Each label is a coloured shape (its own colour and shape), drawn only most of the time, and named in
the caption only some of the time, so neither images nor captions alone are perfect and fusion pays.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .csvio import TEST_COLUMNS, TRAIN_COLUMNS, write_table
from .labels import LABELS, NAMES

# Rough label frequencies of the real data: person on most images, parking meters on few.
FREQ = np.array([0.70, 0.05, 0.20, 0.06, 0.05, 0.06, 0.07, 0.09, 0.07, 0.07, 0.03, 0.03, 0.02, 0.07,
                 0.05, 0.07, 0.08, 0.05])
SHAPES = ("ellipse", "rectangle", "triangle", "cross", "ring", "diamond")
FILLERS = ("in the afternoon", "on a busy street", "near the water", "in a park", "under a cloudy sky",
           "next to a building", "at night", "in the snow")


def _palette(n: int) -> list[tuple[int, int, int]]:
    import colorsys

    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / n, 0.9, 0.95 if i % 2 else 0.6)) for i in range(n)]


COLOURS = _palette(len(LABELS))


def _draw(draw: ImageDraw.ImageDraw, shape: str, colour, box) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    elif shape == "cross":
        w = (x1 - x0) / 4
        draw.rectangle((cx - w / 2, y0, cx + w / 2, y1), fill=colour)
        draw.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int((x1 - x0) / 6)))
    else:
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)


def _labels(rng) -> list[int]:
    chosen = [LABELS[j] for j in np.flatnonzero(rng.random(len(LABELS)) < FREQ)][:7]
    return chosen or [LABELS[int(rng.integers(len(LABELS)))]]


def _image(rng, labels: list[int], size: tuple[int, int], p_drawn: float) -> Image.Image:
    w, h = size
    base = rng.integers(60, 200, 3)
    noise = rng.normal(0, 18, (h, w, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for label in labels:
        if rng.random() > p_drawn:
            continue  # the image hides this label; only the caption may tell
        j = LABELS.index(label)
        side = int(min(w, h) * rng.uniform(0.22, 0.4))
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        _draw(draw, SHAPES[j % len(SHAPES)], COLOURS[j], (x, y, x + side, y + side))
    return img


def _caption(rng, labels: list[int], p_named: float) -> str:
    named = [NAMES[label] for label in labels if rng.random() < p_named]
    filler = FILLERS[int(rng.integers(len(FILLERS)))]
    if not named:
        return f"A picture {filler}."
    if len(named) == 1:
        text = f"A {named[0]} {filler}."
    else:
        text = f"A {', a '.join(named[:-1])} and a {named[-1]} {filler}."  # commas force CSV quoting
    if rng.random() < 0.1:
        text = text.replace("A ", 'A "nice" ', 1)  # doubled quotes in the CSV
    return text


def make_dataset(root: Path, n_train: int = 1000, n_test: int = 300, seed: int = 0,
                 size: tuple[int, int] = (160, 120), p_drawn: float = 0.8, p_named: float = 0.55,
                 images: bool = True) -> Path:
    """Write train.csv, test.csv (CRLF, like the real files) and data/<id>.jpg under root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    train_rows, test_rows = [], []
    for i in range(n_train + n_test):
        labels = _labels(rng)
        image_id = f"{i}.jpg"
        if images:
            _image(rng, labels, size, p_drawn).save(root / "data" / image_id, quality=90)
        caption = _caption(rng, labels, p_named)
        if i < n_train:
            train_rows.append((image_id, " ".join(map(str, labels)), caption))
        else:
            test_rows.append((image_id, caption))
    write_table(root / "train.csv", TRAIN_COLUMNS, train_rows, line_end="\r\n")
    write_table(root / "test.csv", TEST_COLUMNS, test_rows, line_end="\r\n")
    return root


# The demo's own defaults, so it runs on a laptop CPU in minutes: two image models, a small backbone fine-tuned
# from random weights (the resnet50 slot) and a frozen EfficientNet-Lite0 with its ImageNet weights (a variant of
# the embed kind, at 128 px without flips), beside the caption models and the fusion head.
DEMO_DEFAULTS = ["data_dir=demo/data", "out_dir=demo", "models=resnet50,lite0,bilstm,tfidf,minilm,fusion",
                 "variant.lite0.kind=embed", "variant.lite0.embed.size=128", "variant.lite0.embed.flip=false",
                 "image.model=test_resnet", "image.size=64", "image.pretrained=false", "image.epochs=12",
                 "image.batch_size=32", "image.lr=3e-3", "text.epochs=20",
                 "text.batch_size=32", "fusion.epochs=30", "fusion.batch_size=64", "patience=4", "num_workers=0",
                 "tune.trials=60", "tune.threshold_trials=15"]
