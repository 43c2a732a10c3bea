"""CPU rows/s of the frozen caption encoders (BENCHMARKS.md, "Caption encoders on the CPU"): the repo's pass
(solution/models/minilm.encode: equal-length batches, every thread, inference_mode) against
SentenceTransformer.encode (batch_size 128, padded to each batch's longest caption, as the code did before), on
the first N captions of a train.csv, each after a warm-up on 64 captions; with the largest difference between them.
Usage: TQDM_DISABLE=1 .venv/bin/python bench/caption_encoders.py /work/shared/data/comp5329/train.csv 2000 [auto,mpnet]
"""
import sys
import time

import numpy as np

from solution.config import Config
from solution.csvio import TRAIN_COLUMNS, read_table
from solution.models import minilm


def rows_per_s(fn, captions: list[str]) -> tuple[float, np.ndarray]:
    fn(captions[:64])
    start = time.perf_counter()
    emb = fn(captions)
    return len(captions) / (time.perf_counter() - start), emb


def main(path: str, n: int, names: list[str]) -> None:
    captions = [row[-1] for row in read_table(path, TRAIN_COLUMNS).rows[:n]]
    print(f"{len(captions)} captions of {path}")
    for name in names:
        cfg = Config()
        cfg.text.minilm_model = name
        encoder = minilm.load_encoder(cfg)
        ours, emb = rows_per_s(lambda c: minilm.encode(encoder, c, "embed"), captions)
        theirs, ref = rows_per_s(lambda c: encoder.encode(c, batch_size=128, convert_to_numpy=True,
                                                          normalize_embeddings=True, show_progress_bar=False), captions)
        print(f"text.minilm_model={name}: length-batched {ours:.0f} rows/s, SentenceTransformer.encode {theirs:.0f} "
              f"rows/s, x{ours / theirs:.2f}, max |difference| {np.abs(emb - ref).max():.1e}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), (sys.argv[3] if len(sys.argv) > 3 else "auto,mpnet").split(","))
