"""Caption Bi-LSTM (the seed's section 6.1.2 network): pretrained word vectors, BiLSTM, last+max+mean pooling."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .. import log
from ..artefacts import read_json, write_json
from ..context import FoldJob, FoldOutput
from ..labels import N_LABELS
from ..text import Vocab, caption_loss, cpu_threads, embedding_matrix, preprocessor
from ..device import resolve_device
from ..trainer import ArrayRows, fit, load_checkpoint, make_loader, predict
from .spec import ModelSpec


class BiLSTM(nn.Module):
    def __init__(self, vectors: np.ndarray, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(torch.from_numpy(vectors), freeze=False, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(vectors.shape[1], hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.project = nn.Sequential(nn.Linear(6 * hidden, 2 * hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(2 * hidden, N_LABELS)

    def embed(self, ids):
        lengths = (ids != 0).sum(dim=1).clamp(min=1)
        packed = pack_padded_sequence(self.drop(self.embedding(ids)), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        last = torch.cat([h[-2], h[-1]], dim=1)
        max_pool = out.masked_fill(~mask, -1e4).max(dim=1).values
        mean_pool = (out * mask).sum(dim=1) / lengths[:, None]
        return self.project(torch.cat([last, max_pool, mean_pool], dim=1))


def encode(cfg, vocab: Vocab, frame) -> np.ndarray:
    pre = preprocessor(cfg)
    return vocab.encode([pre(c) for c in frame["Caption"]], cfg.text.max_len)


def fold_vocab(job: FoldJob) -> tuple[Vocab, np.ndarray]:
    """Vocabulary of the training folds only (fold k's words stay unknown) and its initial word vectors;
    saved to the checkpoint folder for `infer`."""
    pre = preprocessor(job.cfg)
    train_captions = job.comp.train["Caption"].iloc[job.train_idx]
    vocab = Vocab.build([pre(c) for c in train_captions], job.cfg.text.min_count)
    vectors, source = embedding_matrix(job.cfg.text.vectors, vocab, pre.surface_map(train_captions))
    log.info(f"{job.label}: vocabulary {len(vocab)} words; vectors from {source}")
    write_json(job.ckpt_dir / "vocab.json", {"itos": vocab.itos, "dim": int(vectors.shape[1])})
    return vocab, vectors


def saved_vocab(job: FoldJob) -> tuple[Vocab, np.ndarray]:
    """The fold's vocabulary and a zero matrix of its vector shape (the checkpoint holds the trained values)."""
    saved = read_json(job.ckpt_dir / "vocab.json")
    vocab = Vocab(saved["itos"][2:])
    return vocab, np.zeros((len(vocab), saved["dim"]), np.float32)


def caption_branch(cfg, vectors) -> BiLSTM:
    return BiLSTM(vectors, cfg.text.hidden, cfg.text.layers, cfg.text.dropout)


def _predict_batch(cfg) -> int:
    """Rows per prediction batch, the same in training and `infer`, so both give the same bits."""
    return cfg.network_batch(cfg.text.batch_size) * 4


def run(job: FoldJob) -> FoldOutput:
    with cpu_threads(job.cfg.text.threads):
        return _train(job)


def _train(job: FoldJob) -> FoldOutput:
    cfg, comp = job.cfg, job.comp
    vocab, vectors = fold_vocab(job)
    ids = encode(cfg, vocab, comp.train)
    bs = cfg.network_batch(cfg.text.batch_size)
    train_loader, reseed = make_loader(ArrayRows([ids[job.fit_idx]], comp.y[job.fit_idx]), bs, cfg, shuffle=True)
    stop_loader, _ = make_loader(ArrayRows([ids[job.stop_idx]], comp.y[job.stop_idx]), _predict_batch(cfg), cfg, shuffle=False)
    net = caption_branch(cfg, vectors)
    result = fit(job, net, [{"params": net.parameters(), "lr": cfg.text.lr}], train_loader, stop_loader,
                 comp.y[job.stop_idx], caption_loss(cfg, comp.y[job.fit_idx]), cfg.network_epochs(cfg.text.epochs), reseed)
    device = resolve_device(cfg.device)
    out = {}
    for part, rows in (("train", ids[job.train_idx]), ("val", ids[job.val_idx]), ("test", encode(cfg, vocab, comp.test))):
        loader, _ = make_loader(ArrayRows([rows], None), _predict_batch(cfg), cfg, shuffle=False)
        out[part] = predict(net, loader, device, desc=f"{job.label} predict {part}")
    return FoldOutput(out["val"][0], out["test"][0], result.best_f1, result.best_epoch,
                      {part: out[part][1] for part in out}, result.history)


def infer(job: FoldJob, frame, upstream):
    vocab, vectors = saved_vocab(job)
    net = caption_branch(job.cfg, vectors)
    net.load_state_dict(load_checkpoint(job.ckpt_dir / "best.pt")["model"])
    loader, _ = make_loader(ArrayRows([encode(job.cfg, vocab, frame)], None), _predict_batch(job.cfg), job.cfg, shuffle=False)
    with cpu_threads(job.cfg.text.threads):
        return predict(net, loader, resolve_device(job.cfg.device), desc=f"{job.label} predict")


SPEC = ModelSpec(kind="bilstm", run=run, infer=infer)
