"""oof/report.html: report.md's content plus what a competitor looks at to improve a model, in one file.

The page needs no server and no network: CSS, JS, the figures and the photos' thumbnails (small JPEGs from the image
cache, or decoded once) are inline. Besides report.md (converted, figures inlined) it holds:
- the error gallery: the OOF rows with the lowest nested F1 under the submitted decision (tune.decision), each scored
  with the label set the tuning fitted without its fold chose (blend.npz nested_pred), filterable by label missed or
  extra, by fold, and by disagreement between the image and the caption models;
- per label: support, precision, recall and F1 of those nested label sets, F1's 95% interval (the within-fold
  bootstrap of solution/stats.py), the threshold or calibration curve, and the labels it is most confused with;
- the test rows whose submitted label set has the lowest expected F1 (calibrated probabilities): where the submission
  is most likely wrong.
A data_dir without images gives the same page without thumbnails; a photo that cannot be had is a placeholder.
"""
from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import numpy as np

from . import stats
from .artefacts import atomic_path
from .config import Config
from .data import Competition
from .errors import UserError
from .images import ImageStore, cached_sides, load_rgb, signature
from .labels import LABELS, NAMES
from .metric import expected_f1, f1_by_threshold, scores
from .tune import Tuned, calibrate
from .variants import MODALITIES, kind_of

GALLERY_ROWS = 200  # cards in the error gallery: enough to see patterns, few enough for a small page
TEST_ROWS = 100  # cards in the test-set view
THUMB = (128, 96)  # the largest thumbnail, in pixels (width, height)
THUMB_QUALITY = 70
CONFUSED = 3  # labels named per label as most often confused with it
NEAR = 0.2  # a test card also lists labels left out with at least this calibrated probability
CURVE_X = np.linspace(0.01, 0.99, 50)


def label_text(label: int) -> str:
    """'person 1': a label by name and id, as the page shows every label."""
    return f"{NAMES[label]} {label}"


def gallery_rows(nested_f1: np.ndarray, y: np.ndarray, calibrated: np.ndarray, n: int) -> np.ndarray:
    """The n rows with the lowest nested F1; among equal F1 (many rows score 0) the most confidently wrong first
    (the highest log loss of the calibrated blend, like fastai's top losses), then train.csv order."""
    p = np.clip(calibrated, 1e-6, 1 - 1e-6)
    loss = -np.where(y.astype(bool), np.log(p), np.log(1 - p)).sum(axis=1)
    return np.lexsort((np.arange(len(y)), -loss, nested_f1))[:n]


def label_errors(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(missed, extra): true labels not predicted, and predicted labels not true, as (rows, labels) booleans."""
    truth, pred = np.asarray(y, dtype=bool), np.asarray(pred, dtype=bool)
    return truth & ~pred, ~truth & pred


def disagreement(cfg: Config, oofs: dict[str, np.ndarray]) -> np.ndarray | None:
    """(rows, labels): where the image models' mean probability and the caption models' fall on opposite sides of
    0.5; None when the run lacks one of the two (fusion and joint read both, so count for neither)."""
    sides = [[oofs[m] for m in oofs if kind_of(cfg, m) in kinds] for kinds in MODALITIES.values()]
    if not all(sides):
        return None
    image, caption = (np.mean(side, axis=0) >= 0.5 for side in sides)
    return image != caption


def per_label(y: np.ndarray, pred: np.ndarray, fold: np.ndarray, resamples: int, seed: int) -> list[dict]:
    """Per label: support, precision, recall, F1 (metric.scores) of the nested label sets, F1's 95% interval, and
    the labels most often predicted when it is missed, and most often missed when it is predicted but false.

    The interval resamples rows within each fold (stats.resample) and recomputes F1 = 2tp / (2tp + fp + fn) from
    the resampled mean counts, so it is the bootstrap every other interval of the report uses."""
    truth, pred = np.asarray(y, dtype=bool), np.asarray(pred, dtype=bool)
    s = scores(truth, pred)["per_label"]
    counts = np.concatenate([(truth & pred).T, (~truth & pred).T, (truth & ~pred).T]).astype(np.float64)
    draws = stats.resample(counts, fold, resamples, seed)
    tp, fp, fn = np.split(draws, 3, axis=1)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    missed, extra = label_errors(truth, pred)
    confusion = missed.T.astype(np.int64) @ extra.astype(np.int64)  # [a, b]: rows where a is missed and b is extra

    def top(row: np.ndarray) -> list[tuple[int, int]]:
        order = np.argsort(-row, kind="stable")[:CONFUSED]
        return [(LABELS[i], int(row[i])) for i in order if row[i] > 0]

    return [{"label": label, **s[str(label)], "f1_95": dict(zip(("low", "high"), stats.interval(f1[:, j]))),
             "missed": int(missed[:, j].sum()), "extra": int(extra[:, j].sum()),
             "predicted_instead": top(confusion[j]), "missed_instead": top(confusion[:, j])}
            for j, label in enumerate(LABELS)]


class Thumbnails:
    """Small JPEG data URIs of the photos: from the smallest image cache where it holds the current file, else
    decoded once from data_dir/data; None (the page draws a placeholder) when neither can be had. A data_dir
    without a data/ folder (a caption-only run) has no thumbnails at all."""

    def __init__(self, cfg: Config, comp: Competition):
        self.folder = comp.image_dir
        self.enabled = self.folder.is_dir()
        sides = cached_sides(cfg.out / "cache")
        self.cache = ImageStore(cfg.out / "cache", sides[0]).cache if sides else None

    def uri(self, image_id: str) -> str | None:
        from PIL import Image

        path = self.folder / image_id
        key = str(path.resolve())
        try:
            if self.cache is not None and self.cache.cached(key, signature(path)):
                rgb = self.cache.get(key)
            else:
                rgb = load_rgb(path, THUMB[1])
            img = Image.fromarray(np.ascontiguousarray(rgb))
            img.thumbnail(THUMB)
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=THUMB_QUALITY)
        except Exception:  # gone, unreadable, any decoder failure: a placeholder, never a failed report
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: str) -> str:
    """report.md's inline marks: **bold** and `code`."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", _esc(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _figure(path: Path) -> str:
    if not path.is_file():
        return f'<p class="missing">figure {_esc(path.name)} is missing</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="figure" alt="{_esc(path.name)}" src="data:image/png;base64,{data}">'


def markdown_html(md: str, folder: Path) -> str:
    """report.md as HTML: the subset report.py writes (headings, paragraphs, lists, tables, code blocks, figures,
    **bold**, `code`), with each figure inlined from `folder`."""
    out, table, items, code = [], [], [], None

    def flush():
        if table:
            head, *body = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table
                           if not re.fullmatch(r"\|(-+\|)+", row.strip())]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
                       + "</tbody></table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        if code is not None:
            if line.startswith("```"):
                out.append(f"<pre>{_esc(chr(10).join(code))}</pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("```"):
            code = []
        elif figure := re.fullmatch(r"!\[[^\]]*\]\(([^)]+)\)", line.strip()):
            out.append(_figure(folder / figure.group(1)))
        elif heading := re.match(r"(#+) (.*)", line):
            level = min(len(heading.group(1)) + 1, 6)  # the page's own title is the h1
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def _chips(labels, marks: dict[int, str]) -> str:
    return "".join(f'<span class="chip {marks.get(label, "")}">{_esc(label_text(label))}</span>' for label in labels)


def _prob_table(rows: list[int], columns: dict[str, np.ndarray], marks: dict[int, str]) -> str:
    """A card's probabilities: one row per label involved, one column per series (the blend, then each model)."""
    head = "<tr><th>label</th>" + "".join(f"<th>{_esc(name)}</th>" for name in columns) + "</tr>"
    body = "".join(f'<tr class="{marks.get(LABELS[j], "")}"><td>{_esc(label_text(LABELS[j]))}</td>'
                   + "".join(f"<td>{values[j]:.2f}</td>" for values in columns.values()) + "</tr>" for j in rows)
    return f'<table class="probs">{head}{body}</table>'


def _thumb(thumbs: Thumbnails, image_id: str) -> str:
    if not thumbs.enabled:
        return ""
    uri = thumbs.uri(image_id)
    if uri is None:
        return f'<div class="thumb placeholder" title="{_esc(image_id)}: no image">no image</div>'
    return f'<img class="thumb" alt="{_esc(image_id)}" src="{uri}">'


def _ids(mask_row: np.ndarray) -> str:
    return " ".join(str(LABELS[j]) for j in np.flatnonzero(mask_row))


def gallery_html(rows, ids, captions, y, pred, fold, nested_f1, series, disagree, thumbs, n_folds) -> str:
    """The error gallery's filters and cards; each card's data-missed / data-extra / data-disagree attributes are what
    the filters read (label ids, space-separated)."""
    missed, extra = label_errors(y, pred)
    cards = []
    for r in rows:
        marks = {**{LABELS[j]: "hit" for j in np.flatnonzero(y[r] & pred[r])},
                 **{LABELS[j]: "missed" for j in np.flatnonzero(missed[r])},
                 **{LABELS[j]: "extra" for j in np.flatnonzero(extra[r])}}
        involved = np.flatnonzero(y[r].astype(bool) | pred[r])
        cards.append(
            f'<div class="card" data-row="{r}" data-fold="{fold[r]}" data-missed="{_ids(missed[r])}" '
            f'data-extra="{_ids(extra[r])}" data-disagree="{_ids(disagree[r]) if disagree is not None else ""}">'
            f'{_thumb(thumbs, ids[r])}<div class="body"><div class="meta">{_esc(ids[r])} · fold {fold[r]} · nested F1 '
            f'{nested_f1[r]:.2f}</div><div class="caption">{_esc(captions[r])}</div>'
            f'<div>true: {_chips([LABELS[j] for j in np.flatnonzero(y[r])], marks)}</div>'
            f'<div>predicted: {_chips([LABELS[j] for j in np.flatnonzero(pred[r])], marks)}</div>'
            f'{_prob_table(list(involved), {k: v[r] for k, v in series.items()}, marks)}</div></div>')
    label_options = "".join(f'<option value="{label}">{_esc(label_text(label))}</option>' for label in LABELS)
    fold_options = "".join(f'<option value="{k}">fold {k}</option>' for k in range(n_folds))
    disagree_filter = ('<label><input type="checkbox" id="f-disagree"> image and caption models disagree on a label '
                       '(their mean probabilities on opposite sides of 0.5)</label>' if disagree is not None else
                       '<span class="note">(no image-against-caption filter: the run lacks image or caption models)</span>')
    return (f'<div class="filters"><label>label <select id="f-label"><option value="">any</option>{label_options}'
            '</select></label> <label>as <select id="f-kind"><option value="either">missed or extra</option>'
            '<option value="missed">missed</option><option value="extra">extra</option></select></label> '
            f'<label>fold <select id="f-fold"><option value="">any</option>{fold_options}</select></label> '
            f'{disagree_filter} <span id="f-count"></span></div><div class="cards" id="gallery-cards">{"".join(cards)}</div>')


def _curve_svg(points: np.ndarray, marker: float | None, dots: list[tuple[float, float]], diagonal: bool) -> str:
    """A 160x100 line chart on [0, 1] x [0, 1]: the curve, optionally a vertical marker, dots and the diagonal."""
    def px(x: float) -> str:  # the plot area is (4, 4) to (156, 96), y upwards
        return f"{4 + 152 * x:.1f}"

    def py(y: float) -> str:
        return f"{96 - 92 * y:.1f}"

    parts = ['<svg class="curve" viewBox="0 0 160 100" width="160" height="100"><rect x="4" y="4" width="152" '
             'height="92" fill="none" stroke="#ccc"/>']
    if diagonal:
        parts.append('<line x1="4" y1="96" x2="156" y2="4" stroke="#bbb" stroke-dasharray="3,3"/>')
    polyline = " ".join(f"{px(x)},{py(y)}" for x, y in points)
    parts.append(f'<polyline fill="none" stroke="#1f5fbf" stroke-width="1.5" points="{polyline}"/>')
    if marker is not None:
        parts.append(f'<line x1="{px(marker)}" y1="4" x2="{px(marker)}" y2="96" stroke="#c00"/>')
    parts += [f'<circle cx="{px(x)}" cy="{py(y)}" r="2.2" fill="#e07b00"/>' for x, y in dots]
    return "".join(parts) + "</svg>"


def label_curve(decision: str, truth: np.ndarray, probs: np.ndarray, threshold: float, slope_bias) -> str:
    """The curve of the submitted decision for one label: F1 against the threshold (red: the tuned one), or the Platt
    calibration map with the observed share of positives per tenth of the blend's score (orange)."""
    if decision == "thresholds":
        return _curve_svg(np.column_stack([CURVE_X, f1_by_threshold(truth, probs, CURVE_X)]), threshold, [], False)
    mapped = calibrate(CURVE_X[:, None], np.asarray([slope_bias]))[:, 0]
    bins = np.minimum((probs * 10).astype(int), 9)
    dots = [((b + 0.5) / 10, float(truth[bins == b].mean())) for b in range(10) if np.count_nonzero(bins == b) >= 5]
    return _curve_svg(np.column_stack([CURVE_X, mapped]), None, dots, True)


def labels_html(rows: list[dict], in_sample: dict, decision: str, record: dict, y, probs, gallery_missed,
                gallery_extra) -> str:
    def names(pairs):
        return ", ".join(f"{_esc(label_text(label))} ({n})" for label, n in pairs) or "—"

    curve_title = ("F1 against threshold (red: the tuned threshold)" if decision == "thresholds" else
                   "calibration: the blend's score (x) to probability (y); dots: observed share of positives")
    body = []
    for j, r in enumerate(rows):
        label, key = r["label"], str(r["label"])
        slope, bias = record["calibration"][key]
        body.append(
            f'<tr id="label-{label}"><td>{_esc(label_text(label))}</td><td>{r["support"]}</td><td>{r["precision"]:.3f}</td>'
            f'<td>{r["recall"]:.3f}</td><td>{r["f1"]:.3f} [{r["f1_95"]["low"]:.3f}, {r["f1_95"]["high"]:.3f}]</td>'
            f'<td>{in_sample[key]["f1"]:.3f}</td><td>{record["thresholds"][key]:.2f}</td><td>{slope:.2f}, {bias:+.2f}</td>'
            f'<td>{label_curve(decision, y[:, j].astype(bool), probs[:, j], record["thresholds"][key], (slope, bias))}</td>'
            f'<td>{r["missed"]} (<a href="#gallery?label={label}&amp;kind=missed">{gallery_missed[j]} in gallery</a>)</td>'
            f'<td>{r["extra"]} (<a href="#gallery?label={label}&amp;kind=extra">{gallery_extra[j]} in gallery</a>)</td>'
            f'<td>{names(r["predicted_instead"])}</td><td>{names(r["missed_instead"])}</td></tr>')
    head = ("<tr><th>label</th><th>support</th><th>precision</th><th>recall</th><th>F1 [95%]</th><th>F1 in-sample</th>"
            "<th>threshold</th><th>calibration slope, intercept</th>"
            f"<th>{_esc(curve_title)}</th><th>missed</th><th>extra</th><th>when missed, predicted instead</th>"
            "<th>when extra, missed instead</th></tr>")
    return f'<table class="labels">{head}{"".join(body)}</table>'


def test_html(rows, ids, captions, chosen, calibrated, exp_f1, series, thumbs) -> str:
    cards = []
    for r in rows:
        marks = {LABELS[j]: "chosen" for j in np.flatnonzero(chosen[r])}
        involved = np.flatnonzero(chosen[r] | (calibrated[r] >= NEAR))
        cards.append(
            f'<div class="card" data-test-row="{r}">{_thumb(thumbs, ids[r])}<div class="body"><div class="meta">'
            f'{_esc(ids[r])} · expected F1 {exp_f1[r]:.2f}</div><div class="caption">{_esc(captions[r])}</div>'
            f'<div>submitted: {_chips([LABELS[j] for j in np.flatnonzero(chosen[r])], marks)}</div>'
            f'{_prob_table(list(involved), {k: v[r] for k, v in series.items()}, marks)}</div></div>')
    return f'<div class="cards">{"".join(cards)}</div>'


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b5f;color:#fff;padding:10px 16px}header h1{margin:0;font-size:20px}
nav a{color:#fff;margin-right:16px;font-weight:600;text-decoration:none}nav a:hover{text-decoration:underline}
main{padding:8px 16px}section{max-width:1500px}[hidden]{display:none!important}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#eef2f7}pre{background:#f0f0f0;padding:8px;overflow-x:auto;font-size:12px}
img.figure{max-width:100%;display:block;margin:8px 0}
.filters{position:sticky;top:0;background:#fafafa;padding:6px 0;border-bottom:1px solid #ddd;z-index:1}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:8px;margin-top:8px}
.card{display:flex;gap:8px;background:#fff;border:1px solid #ddd;border-radius:4px;padding:6px}
.thumb{width:128px;height:96px;object-fit:contain;flex:none;background:#eee}
.placeholder{display:flex;align-items:center;justify-content:center;color:#888;font-size:12px;border:1px dashed #bbb}
.body{min-width:0;overflow-x:auto}.meta{color:#666;font-size:12px}.caption{font-style:italic;margin:2px 0}
.chip{display:inline-block;border-radius:3px;padding:0 4px;margin:1px;font-size:12px;background:#eee}
.chip.hit{background:#cfeccf}.chip.chosen{background:#cfe0f7}.chip.missed{background:#f7c6c6;border:1px solid #c33}.chip.extra{background:#fde2b8;border:1px dashed #d80}
table.probs{font-size:11px}table.probs tr.missed td:first-child{color:#c33}table.probs tr.extra td:first-child{color:#d80}
.note{color:#666}.missing{color:#c33}.legend span{margin-right:10px}
"""

JS = """
function filterGallery(){
  const label=document.getElementById('f-label').value, kind=document.getElementById('f-kind').value,
        fold=document.getElementById('f-fold').value, dis=document.getElementById('f-disagree');
  const cards=document.querySelectorAll('#gallery-cards .card'); let shown=0;
  cards.forEach(function(card){
    const missed=card.dataset.missed.split(' '), extra=card.dataset.extra.split(' ');
    let ok=true;
    if(label){ok=(kind!=='extra'&&missed.includes(label))||(kind!=='missed'&&extra.includes(label));}
    else if(kind==='missed'){ok=card.dataset.missed!=='';}
    else if(kind==='extra'){ok=card.dataset.extra!=='';}
    if(fold!==''&&card.dataset.fold!==fold){ok=false;}
    if(dis&&dis.checked&&card.dataset.disagree===''){ok=false;}
    card.hidden=!ok; if(ok){shown++;}
  });
  document.getElementById('f-count').textContent=shown+' of '+cards.length+' cards';
}
function show(){
  const parts=(location.hash.slice(1)||'summary').split('?'), id=parts[0];
  const sections=document.querySelectorAll('main > section');
  const known=Array.prototype.some.call(sections,function(s){return s.id==='section-'+id;});
  sections.forEach(function(s){s.hidden=known&&s.id!=='section-'+id;});
  if(id==='gallery'&&parts[1]){
    const q=new URLSearchParams(parts[1]);
    if(q.has('label')){document.getElementById('f-label').value=q.get('label');}
    if(q.has('kind')){document.getElementById('f-kind').value=q.get('kind');}
    if(q.has('fold')){document.getElementById('f-fold').value=q.get('fold');}
  }
  filterGallery();
}
document.querySelectorAll('.filters select, .filters input').forEach(function(el){el.addEventListener('change',filterGallery);});
window.addEventListener('hashchange',show);
show();
"""


def page(title: str, header: str, sections: dict[str, tuple[str, str]]) -> str:
    """The whole document: sections {id: (title, html)}, a tab per section; #id in the URL opens one (the element
    itself is section-<id>, so the browser does not scroll past the header to it)."""
    nav = "".join(f'<a href="#{sid}">{_esc(name)}</a>' for sid, (name, _) in sections.items())
    body = "".join(f'<section id="section-{sid}"><h2>{_esc(name)}</h2>{content}</section>'
                   for sid, (name, content) in sections.items())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
            f'<header><h1>{_esc(title)}</h1>{header}<nav>{nav}</nav></header><main>{body}</main>'
            f'<script>{JS}</script></body></html>\n')


def write_report_html(cfg: Config, comp: Competition, record: dict, arrays: dict, out: dict,
                      oofs: dict[str, np.ndarray], tests: dict[str, np.ndarray], markdown: str) -> Path:
    """Write oof/report.html from tune's blend (record, arrays), report's results (out, markdown) and each blended
    model's OOF and test probabilities (the scale each model wrote)."""
    if "nested_pred" not in arrays:
        raise UserError(f"{cfg.out / 'oof' / 'blend.npz'} has no nested label sets (an older version wrote it); "
                        "rerun ./run.sh tune")
    decision, tuned = record["decision"], Tuned.from_record(record)
    y, pred, fold = comp.y.astype(bool), arrays["nested_pred"].astype(bool), arrays["fold"]
    nested_f1 = arrays["nested_f1"][len(record["models"])]  # the blend's row, after every model's
    oof_cal, test_cal = calibrate(arrays["oof"], tuned.calibration), calibrate(arrays["test"], tuned.calibration)
    thumbs = Thumbnails(cfg, comp)

    rows = gallery_rows(nested_f1, y, oof_cal, GALLERY_ROWS)
    missed, extra = label_errors(y[rows], pred[rows])
    blend_name = "blend (calibrated)"
    gallery = gallery_html(rows, comp.train["ImageID"].to_numpy(dtype=str), comp.train["Caption"].to_numpy(dtype=str),
                           y, pred, fold, nested_f1, {blend_name: oof_cal, **oofs}, disagreement(cfg, oofs), thumbs,
                           cfg.n_folds)
    label_rows = per_label(y, pred, fold, cfg.report.resamples, cfg.seed)
    labels = labels_html(label_rows, out["blend"]["per_label"], decision, record, y, arrays["oof"],
                         missed.sum(axis=0), extra.sum(axis=0))

    chosen = tuned.label_sets(arrays["test"], decision)  # exactly the submitted label sets
    exp_f1 = expected_f1(test_cal, chosen)
    test_rows = np.lexsort((np.arange(len(exp_f1)), exp_f1))[:TEST_ROWS]
    test = test_html(test_rows, comp.test["ImageID"].to_numpy(dtype=str), comp.test["Caption"].to_numpy(dtype=str),
                     chosen, test_cal, exp_f1, {blend_name: test_cal, **tests}, thumbs)

    b = out["blend"]
    unused = [m for m in cfg.models if m not in record["models"]]
    no_thumbs = "" if thumbs.enabled else f" No photos in {_esc(comp.image_dir)}: no thumbnails."
    header = (f'<p>Expected leaderboard samples-F1 (nested CV) <strong>{stats.text(b["nested_95"])}</strong>; decision '
              f'{_esc(decision)}; {len(comp.train)} OOF rows, {len(comp.test)} test rows; models blended: '
              f'{_esc(", ".join(record["models"]))}.'
              + (f' Not in the blend (no OOF in it): {_esc(", ".join(unused))}.' if unused else "") + f'{no_thumbs}</p>')
    nested_note = (f"<p>Each OOF row is decided ({_esc(decision)}) by the tuning fitted without its fold, as the nested "
                   "score counts it. Chips: <span class=\"chip hit\">true and predicted</span><span class=\"chip missed\">"
                   "missed</span><span class=\"chip extra\">extra</span>. Probabilities: the blend after its calibration, "
                   "then each model's own.</p>")
    sections = {
        "summary": ("Summary (report.md)", markdown_html(markdown, cfg.out / "oof")),
        "gallery": (f"Error gallery: the {len(rows)} OOF rows with the lowest nested F1",
                    nested_note + "<p>Lowest nested F1 first; among equal F1 the most confidently wrong first.</p>"
                    + gallery),
        "labels": ("Per label", nested_note + "<p>Support, precision, recall and F1 of the nested label sets, F1 with "
                   f"its 95% interval ({cfg.report.resamples} resamples of the rows within each fold); F1 in-sample as "
                   "report.md gives it. Confusions count OOF rows where one label is missed and the other extra.</p>"
                   + labels),
        "test": (f"Test set: the {len(test_rows)} rows the submission is least sure of",
                 "<p>The submitted label set of each test row and its expected F1 under the blend's calibrated "
                 f"probabilities (labels taken as independent); lowest first. Also listed: labels left out with a "
                 f"calibrated probability of at least {NEAR}.</p>" + test),
    }
    path = cfg.out / "oof" / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page("OOF report", header, sections), encoding="utf-8")
    return path
