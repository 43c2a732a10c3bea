"""oof/report.html: the error gallery, its filters, the test-set view, thumbnails and placeholders, and a page that
needs no network and parses. One tiny TF-IDF run (3 folds of 60 rows with photos) is reported three times: with its
photos, with one gallery photo deleted, and from a copy of the CSVs without photos (a caption-only run)."""
from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from solution import report_html
from solution.artefacts import load_arrays, read_json
from solution.cli import main as cli_main
from solution.config import Config
from solution.data import load_competition
from solution.demo import make_dataset
from solution.images import ImageStore, cached_sides
from solution.labels import LABELS
from solution.metric import expected_f1, per_row_f1_binary
from solution.tune import Tuned, calibrate

TINY = ["models=tfidf", "n_folds=3", "tune.threshold_trials=2", "tune.steps=1", "report.resamples=100"]
VOID = {"meta", "img", "input", "br", "hr", "link", "source", "col", "wbr", "area", "base", "embed", "param", "track"}
GALLERY, TEST_ROWS = 15, 6


class Page(HTMLParser):
    """The page's elements: every opened tag must be closed in order (the checks html.parser leaves out), and the
    cards, img sources and links are collected."""

    def __init__(self, text: str):
        super().__init__()
        self.stack, self.cards, self.tests, self.urls, self.thumbs, self.placeholders = [], [], [], [], 0, 0
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed: {self.stack}"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in VOID:
            self.stack.append(tag)
        self.urls += [attrs[k] for k in ("src", "href", "action", "srcset") if k in attrs]
        if "data-row" in attrs:
            self.cards.append(attrs)
        if "data-test-row" in attrs:
            self.tests.append(attrs)
        classes = (attrs.get("class") or "").split()
        self.thumbs += tag == "img" and "thumb" in classes
        self.placeholders += "placeholder" in classes

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:] or 'nothing'}"
        self.stack.pop()


def _run(*args) -> None:
    assert cli_main([str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """(data_dir, out_dir, pages): the page with photos, with one gallery photo deleted, and without photos."""
    patch = pytest.MonkeyPatch()
    patch.setattr(report_html, "GALLERY_ROWS", GALLERY)
    patch.setattr(report_html, "TEST_ROWS", TEST_ROWS)
    root = tmp_path_factory.mktemp("report_html")
    data, out = make_dataset(root / "data", n_train=60, n_test=20, size=(48, 36)), root / "out"
    common = [f"data_dir={data}", f"out_dir={out}", *TINY]
    for command in ("train", "tune", "report"):
        _run(command, *common)
    pages = {"photos": (out / "oof" / "report.html").read_text()}
    first = Page(pages["photos"]).cards[0]["data-row"]
    (data / "data" / f"{first}.jpg").unlink()  # the demo names row i's photo i.jpg
    _run("report", *common)
    pages["one gone"] = (out / "oof" / "report.html").read_text()
    captions = root / "captions"
    captions.mkdir()
    for name in ("train.csv", "test.csv"):  # the same bytes, so the same data fingerprint, and no data/ folder
        shutil.copy(data / name, captions / name)
    _run("report", f"data_dir={captions}", f"out_dir={out}", *TINY)
    pages["captions"] = (out / "oof" / "report.html").read_text()
    patch.undo()
    return data, out, pages


def _labels(attr: str) -> set[int]:
    return set(map(int, attr.split()))


def test_gallery_rows_are_the_lowest_nested_f1_rows_with_their_nested_label_sets(reported):
    data, out, pages = reported
    record, (_, arrays) = read_json(out / "oof" / "blend.json"), load_arrays(out / "oof" / "blend.npz")
    nested = arrays["nested_f1"][len(record["models"])]
    y = load_competition(data).y.astype(bool)
    cards = Page(pages["photos"]).cards
    rows = np.array([int(c["data-row"]) for c in cards])
    assert len(rows) == GALLERY == len(set(rows))
    assert nested[rows].max() <= np.delete(nested, rows).min()  # no row outside scores lower
    assert np.all(np.diff(nested[rows]) >= 0)  # lowest first
    for card, r in zip(cards, rows):  # the label sets shown are the ones that scored each row's nested F1
        assert int(card["data-fold"]) == arrays["fold"][r]
        pred = y[r].copy()
        pred[[LABELS.index(label) for label in _labels(card["data-missed"])]] = False
        pred[[LABELS.index(label) for label in _labels(card["data-extra"])]] = True
        assert np.array_equal(pred, arrays["nested_pred"][r])
        assert per_row_f1_binary(y[r][None], pred[None])[0] == pytest.approx(nested[r])


def test_each_label_filter_holds_exactly_the_rows_where_it_is_missed_or_extra(reported):
    data, out, pages = reported
    _, arrays = load_arrays(out / "oof" / "blend.npz")
    y, pred = load_competition(data).y.astype(bool), arrays["nested_pred"]
    cards = Page(pages["photos"]).cards
    rows = [int(c["data-row"]) for c in cards]
    for j, label in enumerate(LABELS):
        missed = {r for c, r in zip(cards, rows) if label in _labels(c["data-missed"])}
        extra = {r for c, r in zip(cards, rows) if label in _labels(c["data-extra"])}
        assert missed == {r for r in rows if y[r, j] and not pred[r, j]}, label
        assert extra == {r for r in rows if pred[r, j] and not y[r, j]}, label
    assert 'id="f-label"' in pages["photos"] and "dataset.missed" in pages["photos"]  # what the filter reads


def test_test_view_holds_the_rows_with_the_lowest_expected_f1(reported):
    _, out, pages = reported
    record, (_, arrays) = read_json(out / "oof" / "blend.json"), load_arrays(out / "oof" / "blend.npz")
    tuned = Tuned.from_record(record)
    chosen = tuned.label_sets(arrays["test"], record["decision"])
    exp = expected_f1(calibrate(arrays["test"], tuned.calibration), chosen)
    rows = [int(c["data-test-row"]) for c in Page(pages["photos"]).tests]
    assert len(rows) == TEST_ROWS and exp[rows].max() <= np.delete(exp, rows).min()


def test_the_page_parses_and_references_no_external_url(reported):
    _, _, pages = reported
    for text in pages.values():
        page = Page(text)  # every tag closed in order
        assert page.urls and all(u.startswith(("data:", "#")) for u in page.urls), [u[:40] for u in page.urls]
        assert not re.search(r"https?://|url\(|@import|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I)
        assert "<script src" not in text and "<link" not in text


def test_photos_become_thumbnails_and_a_missing_one_a_placeholder(reported):
    _, _, pages = reported
    every = Page(pages["photos"])
    assert every.thumbs == GALLERY + TEST_ROWS and every.placeholders == 0
    one_gone = Page(pages["one gone"])
    assert one_gone.thumbs == GALLERY + TEST_ROWS - 1 and one_gone.placeholders == 1
    assert re.search(r'<div class="card" data-row="\d+"[^>]*><div class="thumb placeholder"', pages["one gone"])


def test_thumbnails_come_from_the_smallest_image_cache_whatever_else_is_in_cache(reported, tmp_path, monkeypatch):
    data = shutil.copytree(reported[0], tmp_path / "data")  # the module's photos stay as they are
    comp, out = load_competition(data), tmp_path / "out"
    photos = sorted((data / "data").glob("*.jpg"))
    for side in (32, 16):
        ImageStore(out / "cache", side).prepare(photos, workers=0, skip_bad=False)
    (out / "cache" / "images_old.json").write_text("{}")  # not a cache: no size in its name
    (out / "cache" / "images_8.lock").write_text("")
    assert cached_sides(out / "cache") == [16, 32]
    thumbs = report_html.Thumbnails(Config(out_dir=str(out)), comp)
    assert thumbs.cache.index_path.name == "images_16.json"

    def no_decoding(*args):
        raise AssertionError("decoded although the cache holds it")

    monkeypatch.setattr(report_html, "load_rgb", no_decoding)
    assert thumbs.uri(photos[0].name).startswith("data:image/jpeg;base64,")
    photos[0].write_bytes(photos[1].read_bytes() + b"changed")  # a changed photo is not served from the cache
    assert thumbs.uri(photos[0].name) is None  # (decoding it is refused here, so: the placeholder)


def test_a_caption_only_run_gets_the_page_without_thumbnails(reported):
    _, _, pages = reported
    page = Page(pages["captions"])
    assert page.thumbs == 0 and page.placeholders == 0 and "no thumbnails" in pages["captions"]
    assert len(page.cards) == GALLERY and len(page.tests) == TEST_ROWS
    assert pages["captions"].count('<img class="figure"') == pages["photos"].count('<img class="figure"') >= 3


def test_per_label_counts_and_intervals():
    y = np.zeros((40, len(LABELS)), dtype=bool)
    pred = np.zeros_like(y)
    y[:20, 0], pred[:10, 0] = True, True  # person: 10 hits, 10 missed
    pred[10:20, 2] = True  # car predicted on the 10 rows that miss person
    rows = report_html.per_label(y, pred, np.arange(40) % 4, 200, 0)
    person, car = rows[0], rows[2]
    assert (person["support"], person["missed"], person["extra"]) == (20, 10, 0)
    assert person["predicted_instead"] == [(3, 10)] and car["missed_instead"] == [(1, 10)]
    assert person["f1"] == pytest.approx(2 / 3)
    assert person["f1_95"]["low"] <= person["f1"] <= person["f1_95"]["high"]
    assert person["f1_95"]["low"] < person["f1_95"]["high"]


def test_disagreement_is_image_models_against_caption_models_at_one_half():
    from solution.settings import build_config

    cfg = build_config([])
    probs = lambda *p: np.array([list(p) + [0.0] * (len(LABELS) - len(p))])  # noqa: E731
    oofs = {"resnet50": probs(0.9, 0.2, 0.6), "lite0": probs(0.7, 0.2, 0.6), "bilstm": probs(0.1, 0.7, 0.6),
            "tfidf": probs(0.3, 0.5, 0.6), "fusion": probs(0.0, 0.0, 0.0)}  # fusion, if counted, would flip label 3
    cfg.variant["lite0"] = {"kind": "embed"}
    got = report_html.disagreement(cfg, oofs)
    assert np.flatnonzero(got[0]).tolist() == [0, 1]  # image means 0.8, 0.2, 0.6 against caption 0.2, 0.6, 0.6
    assert report_html.disagreement(cfg, {m: oofs[m] for m in ("bilstm", "tfidf", "fusion")}) is None
