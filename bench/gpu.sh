#!/usr/bin/env bash
# Issue 11's GPU figures, appended to BENCHMARKS.md, on a CUDA machine: `bash bench/gpu.sh`. Expected 4 to 6 min
# (an estimate: not yet run on a GPU); no step runs past its limit, and the limits add up to 9 min 30 s.
#   1. ResNet50 @ 224, bf16, channels_last: train and inference img/s with and without the cache, the loader
#      ceiling (1 worker and num_workers=auto) and the GPU alone (./run.sh bench device=cuda);
#   2. the same with image.compile=true, and with image.gpu_aug=true (crop and flip on the GPU);
#   3. end to end: ResNet50 (random init) trained on fold 0 of 1,200 synthetic 400x300 JPEGs for 2 epochs,
#      the last epoch's training img/s as the log reports it, on 1 GPU and, with 2 or more GPUs, gpus=2 (DDP);
#      then the fine-tuning recipe's heavier parts on 1 GPU: EMA, 2-step gradient accumulation, layer decay and
#      stochastic depth (image.batch_size=32 image.accum_steps=2: one update of 64 rows, as on two T4s);
#   4. a frozen CLIP ViT-B/16 embedding pass (the embed kind), or a "skipped: no weights" row without network;
#   5. MiniLM on fold 0 of the real captions, frozen and fine-tuned (text.finetune=true), and their fold-0
#      samples-F1 at 0.5 as one row of a table in BENCHMARKS.md (skipped when DATA_DIR has no train.csv).
# PYTHON (default: .venv/bin/python if present, else python3) runs the project; DATA_DIR defaults to
# ../shared/data/comp5329. The log goes to $OUT if set, else bench/out/, with a copy of BENCHMARKS.md.
# A failed or timed-out step is logged and the others still run; the exit code is then 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
fi
data="${DATA_DIR:-../shared/data/comp5329}"
logs="${OUT:-bench/out}"
mkdir -p "$logs"
exec > >(tee -a "$logs/gpu-$(date +%Y%m%d-%H%M%S).log") 2>&1
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false

if ! "$PYTHON" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  echo "bench/gpu.sh: $PYTHON's torch sees no CUDA GPU; run this on a machine with one" >&2
  exit 1
fi
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0

step() {  # step SECONDS WHAT COMMAND...: one measurement under a time limit; a failure is logged, not fatal
  local limit="$1" what="$2" start="$SECONDS"
  shift 2
  echo "== $(date +%T) $what"
  if timeout "$limit" "$@"; then
    echo "== done in $((SECONDS - start)) s: $what"
  else
    echo "== FAILED or over ${limit} s (exit $?): $what"
    failed=1
  fi
  step_seconds=$((SECONDS - start))
}

step 80 "ResNet50 @ 224 bench (cache, no cache, loader ceiling, GPU alone)" "$PYTHON" -m solution bench device=cuda
step 80 "the same with image.compile=true" "$PYTHON" -m solution bench device=cuda image.compile=true bench.images=1024
step 60 "the same with the augmentation on the GPU (image.gpu_aug=true)" "$PYTHON" -m solution bench device=cuda \
  image.gpu_aug=true bench.images=1024
step 60 "frozen CLIP ViT-B/16 embedding rate (its weights from the network or the HF cache)" "$PYTHON" - "$work" <<'PY'
"""One row of the embedding table: 1,024 synthetic JPEGs embedded (with their flips) by the CLIP ViT-B/16 image
tower, or 'skipped: no weights' when this machine can neither download nor find them."""
import sys
from pathlib import Path

import torch

from solution.bench import _synthetic, embedding_row
from solution.settings import build_config

work = Path(sys.argv[1])
overrides = ["device=cuda", "embed.model=vit_base_patch16_clip_224.openai", "embed.batch_size=256"]
cfg = build_config(overrides)
paths = _synthetic(work / "embed-data", 1024, cfg.seed, cfg.worker_count())
embedding_row(cfg, overrides, paths, work / "embed-out", torch.device("cuda"))
PY
gpus="$(nvidia-smi -L | wc -l)"
step 120 "end-to-end training rate, 1 GPU$([ "$gpus" -ge 2 ] && echo ', 2 GPUs (DDP)'), recipe with EMA and accumulation" "$PYTHON" - "$work" "$gpu" "$gpus" <<'PY'
"""Train resnet50 on fold 0 of a synthetic set (1 GPU, then gpus=2 when there are two, then 1 GPU with EMA,
accumulation, layer decay and stochastic depth) and put the last epoch's logged training img/s, data loading
included, as rows of the end-to-end table in BENCHMARKS.md."""
import re
import subprocess
import sys
import time
from pathlib import Path

from solution.demo import make_dataset

work, gpu, gpus = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
data = make_dataset(work / "e2e-data", n_train=1200, n_test=16, size=(400, 300))
rows = []
recipe = ["image.ema=0.999", "image.batch_size=32", "image.accum_steps=2", "image.layer_decay=0.85", "image.drop_path=0.1"]
runs = [(1, [])] + ([(2, [])] if gpus >= 2 else []) + [(1, recipe)]
for i, (n, extra) in enumerate(runs):
    args = [sys.executable, "-m", "solution", "train", f"data_dir={data}", f"out_dir={work / f'e2e-{i}'}", "models=resnet50",
            "fold=0", "image.pretrained=false", "image.epochs=2", "device=cuda", f"gpus={n}", *extra]
    proc = subprocess.run(args, capture_output=True, text=True)
    rates = re.findall(r"epoch 2/2: .* ([0-9]+) img/s", proc.stderr)
    print(proc.stderr[-1500:])
    rows.append(f"| {time.strftime('%Y-%m-%d')} | {gpu} x {n} | `{' '.join(args[2:])}` | {rates[-1] if rates else 'failed'} |\n")
end = "<!-- e2e:end -->"
path = Path("BENCHMARKS.md")
head, tail = path.read_text(encoding="utf-8").split(end, 1)
path.write_text(head + "".join(rows) + end + tail, encoding="utf-8")
print("".join(rows))
PY

if [ -f "$data/train.csv" ]; then
  for finetune in false true; do
    step 75 "MiniLM fold 0, text.finetune=$finetune" "$PYTHON" -m solution train data_dir="$data" \
      out_dir="$work/minilm-$finetune" models=minilm fold=0 text.finetune="$finetune" device=cuda
    echo "$step_seconds" > "$work/minilm-$finetune.seconds"
  done
  step 20 "MiniLM fold-0 table" "$PYTHON" - "$work" "$gpu" <<'PY'
"""One row of the MiniLM table: fold-0 samples-F1 at 0.5 (and seconds) of the frozen and fine-tuned runs."""
import json
import sys
import time
from pathlib import Path

work, gpu = Path(sys.argv[1]), sys.argv[2]
end = "<!-- minilm:end -->"
cells = []
for finetune in ("false", "true"):
    fold = work / f"minilm-{finetune}" / "oof" / "minilm" / "fold0.json"
    f1 = f"{json.loads(fold.read_text())['oof_samples_f1_at_0.5']:.4f}" if fold.exists() else "failed"
    cells.append(f"{f1} ({(work / f'minilm-{finetune}.seconds').read_text().strip()} s)")
path = Path("BENCHMARKS.md")
text = path.read_text(encoding="utf-8")
if end not in text:
    sys.exit(f"bench/gpu.sh: {path} has no {end} line to put the MiniLM row above")
head, tail = text.split(end, 1)
row = f"| {time.strftime('%Y-%m-%d')} | {gpu} | {cells[0]} | {cells[1]} |\n"
path.write_text(head + row + end + tail, encoding="utf-8")
print("MiniLM fold 0 (frozen | fine-tuned):", row.strip())
PY
else
  echo "== skipped MiniLM: no $data/train.csv (DATA_DIR=... names the folder with the real captions)"
fi
cp BENCHMARKS.md "$logs/"
exit "$failed"
