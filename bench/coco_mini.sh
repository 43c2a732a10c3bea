#!/usr/bin/env bash
# Issues 15 and 20's table: real COCO photos (../shared/data/coco-mini: 97 labelled, 62 unlabelled), 5 folds, nested
# samples-F1 (expected_f1 decision) and the wall time of each command, for
#   1. embed: frozen EfficientNet-Lite0 (the efficientnet-lite0 package's ImageNet weights), an MLP head per fold;
#   2. the image kind fine-tuning the same network from the same weights with the recipe's defaults
#      (warm-up, linear-probe head, EMA);
#   3. the same with the old recipe (no warm-up, random head trained with the backbone from step one, no EMA);
#   4. the same with the other head-first choice (random head trained alone for 2 epochs, then the backbone);
#   5. the defaults from random weights;
#   6. the frequency baseline: every row gets the label set most common in its training folds.
# Each score's 95% interval comes from the report (rows resampled within folds); with 97 rows it is about ±0.07, so
# each model is also given paired on the same rows against the baseline and against the frozen embedding.
# Usage: bash bench/coco_mini.sh [WORK_DIR]   (PYTHON defaults to .venv/bin/python; about 50 min on 2 CPU cores)
# A run whose NAME.seconds exists in WORK_DIR is kept, so a cut-off script picks up where it stopped; SKIP="random ..."
# leaves those runs out (their rows say "not run").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
data="${DATA_DIR:-../shared/data/coco-mini}"
work="${1:-$(mktemp -d)}"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
common=(data_dir="$data" n_folds=5 num_workers=auto)
image=(image.model=tf_efficientnet_lite0 image.size=224 image.epochs=12 image.batch_size=16 patience=4)

timed() {  # timed NAME ARGS...: one `all` run into $work/NAME, its wall time in $work/NAME.seconds
  local name="$1" start="$SECONDS"
  shift
  [ -f "$work/$name.seconds" ] && return
  [[ " ${SKIP:-} " == *" $name "* ]] && return
  "$PYTHON" -m solution all "${common[@]}" out_dir="$work/$name" "$@" > "$work/$name.log" 2>&1
  echo "$((SECONDS - start))" > "$work/$name.seconds"
}

timed embed models=embed
timed finetuned models=resnet50 "${image[@]}" image.weights=efficientnet-lite0
timed old_recipe models=resnet50 "${image[@]}" image.weights=efficientnet-lite0 \
  image.warmup=0 image.head_init=random image.ema=0
timed head_frozen models=resnet50 "${image[@]}" image.weights=efficientnet-lite0 \
  image.head_init=random image.freeze_epochs=2
timed random models=resnet50 "${image[@]}" image.pretrained=false

"$PYTHON" - "$work" "$data" <<'EOF'
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from solution.data import load_competition
from solution.folds import read_folds
from solution.settings import build_config
from solution.metric import per_row_f1_binary
from solution.stats import summarise

work, data = Path(sys.argv[1]), sys.argv[2]
cfg = build_config([f"data_dir={data}", f"out_dir={work / 'embed'}", "n_folds=5"])
comp = load_competition(data)
fold = read_folds(cfg, comp)
rows = np.zeros(len(comp.y))
for k in range(cfg.n_folds):  # nested: the label set most common in the other folds, scored on fold k
    common = Counter(map(tuple, comp.y[fold != k])).most_common(1)[0][0]
    rows[fold == k] = per_row_f1_binary(comp.y[fold == k], np.tile(np.array(common, bool), ((fold == k).sum(), 1)))
print(f"rows: {len(comp.y)} labelled, {len(comp.test)} test; folds of {np.bincount(fold).tolist()} rows")
from solution.artefacts import load_arrays

def own_rows(name):  # its rows' nested F1 under the blend (one model), on the same folds
    return load_arrays(work / name / "oof" / "blend.npz")[1]["nested_f1"][-1]


def paired(diff):
    gain = summarise({"d": diff}, fold, 2000, cfg.seed)["d"]
    return f"{gain['score']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}]"


print("| model | nested samples-F1 (expected_f1) | 95% interval | against the baseline, paired [95%] "
      "| against embed, paired [95%] | wall time |")
print("|---|---|---|---|---|---|")
for name, label in (("embed", "embed: frozen EfficientNet-Lite0 + MLP head"),
                    ("finetuned", "image: EfficientNet-Lite0 fine-tuned from its ImageNet weights, recipe defaults"),
                    ("old_recipe", "image: the same, old recipe (no warm-up, random head, no EMA)"),
                    ("head_frozen", "image: the same, random head trained alone for 2 epochs first"),
                    ("random", "image: recipe defaults from random weights")):
    if not (work / f"{name}.seconds").exists():
        print(f"| {label} | not run | | | | |")
        continue
    nested = json.loads((work / name / "oof" / "report.json").read_text())["blend"]["nested_95"]  # one model
    against_embed = "" if name == "embed" else paired(own_rows(name) - own_rows("embed"))
    seconds = int((work / f"{name}.seconds").read_text())
    print(f"| {label} | {nested['score']:.4f} | {nested['low']:.4f} to {nested['high']:.4f} | "
          f"{paired(own_rows(name) - rows)} | {against_embed} | {seconds // 60} min {seconds % 60:02d} s |")
baseline = summarise({"baseline": rows}, fold, 2000, cfg.seed)["baseline"]
print(f"| frequency baseline: the most common label set of the training folds | {baseline['score']:.4f} | "
      f"{baseline['low']:.4f} to {baseline['high']:.4f} | | | — |")
EOF
