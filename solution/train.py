"""Stage 2: for each selected model and fold, train on the other folds and save OOF + test predictions.

Finished folds whose provenance matches are skipped (force=true retrains); an interrupted fold resumes
from its last finished epoch. A fold trains in its staging folder and replaces the finished one only when
done (oof.save_fold), so a retrain that is cut short leaves the fold trained before in use.
"""
from __future__ import annotations

import contextlib
import time


from . import distributed, log
from .config import Config, save_config
from .context import FoldJob
from .data import Competition
from .folds import make_folds
from .images import report_skipped
from .metric import samples_f1
from .models import REGISTRY, needs_images, training_order
from .oof import collect_oof, fold_done, provenance, save_fold
from .trainer import seed_everything


def prepare_images(cfg: Config, comp: Competition, frames):
    """Pre-flight scan (and cache fill) of every image the selected models will read."""
    from .models.image import image_store

    if not comp.image_dir.is_dir():
        from .errors import UserError

        raise UserError(f"{comp.image_dir} does not exist; image models need data_dir/data/<ImageID> "
                        "(or choose caption models only, e.g. models=bilstm,tfidf)")
    store = image_store(cfg)
    paths = [comp.image_dir / i for frame in frames for i in frame["ImageID"]]
    bad = store.prepare(paths, cfg.worker_count(), skip_bad=cfg.on_bad_image == "skip")
    report_skipped(bad, cfg.out / "logs" / "skipped_images.txt")
    return store


def train(cfg: Config, comp: Competition) -> None:
    """In a DDP run every rank comes here: image networks train on all ranks, the other models on rank 0
    alone, and only rank 0 writes folds, cache, checkpoints and artefacts (the others read them after)."""
    fold_of_row = distributed.main_first(lambda: make_folds(cfg, comp))
    order = training_order(cfg, cfg.models)
    store = distributed.main_first(lambda: prepare_images(cfg, comp, (comp.train, comp.test))) \
        if needs_images(cfg, order) else None
    main = distributed.is_main()
    if main:
        save_config(cfg, cfg.out / "oof" / "config.json")
    for model in order:
        spec = REGISTRY[model]
        together = spec.kind == "image"  # the networks worth several GPUs
        for k in cfg.fold:
            distributed.barrier()  # every rank sees the same finished folds
            prov = provenance(cfg, comp, model, k)  # per fold: a stack's depends on its upstream fold's features
            job = FoldJob(cfg, comp, fold_of_row, k, model, prov, store, training=True)
            if fold_done(cfg, comp, model, k, prov):
                if not cfg.force:
                    log.info(f"{job.label}: already trained with these data, folds and settings; skipping "
                             "(force=true retrains)")
                    continue
            if not (together or main):
                continue
            seed_everything(cfg.seed * 100 + k)
            start = time.time()
            with contextlib.nullcontext() if together else distributed.alone():
                out = spec.run(job)
            if main:
                save_fold(cfg, comp, model, k, job.val_idx, out, prov, job.train_idx)
            log.info(f"{job.label}: fold {k} samples-F1 at 0.5 = {samples_f1(comp.y[job.val_idx], out.val_probs):.4f} "
                     f"on its {len(job.val_idx)} unseen rows ({time.time() - start:.0f}s)")
    distributed.barrier()
    if not main:
        return
    for model in order:
        missing = [k for k in range(cfg.n_folds) if not fold_done(cfg, comp, model, k, provenance(cfg, comp, model, k))]
        if not missing:
            oof, _, _ = collect_oof(cfg, comp, model)
            log.info(f"{model}: all {cfg.n_folds} folds done; OOF samples-F1 at 0.5 = {samples_f1(comp.y, oof):.4f}")
        else:
            log.info(f"{model}: folds {','.join(map(str, missing))} still to train before tune/submit")
