"""Stage 2: for each selected model and fold, train on the other folds and save OOF + test predictions.

Finished folds whose provenance matches are skipped (force=true retrains); an interrupted fold resumes
from its last finished epoch. A fold trains in its staging folder and replaces the finished one only when
done (oof.save_fold), so a retrain that is cut short leaves the fold trained before in use.
"""
from __future__ import annotations

import contextlib
import time


from . import distributed, log
from .artefacts import remove_temps
from .config import Config, save_config
from .context import FoldJob
from .data import Competition
from .folds import make_folds
from .images import report_skipped
from .metric import samples_f1
from .models import training_order
from .oof import collect_oof, fold_done, provenance, save_fold
from .variants import describe
from .trainer import seed_everything


class ImageSource:
    """The images of a run's rows (train: train.csv and test.csv; predict: the new test.csv), checked and
    cached on first use, once per side: two backbones at 224 and 288 px get one image cache each."""

    def __init__(self, cfg: Config, comp: Competition, frames):
        self.cfg, self.comp, self.frames = cfg, comp, frames
        self._stores: dict[int, object] = {}

    def paths(self) -> list:
        return [self.comp.image_dir / i for frame in self.frames for i in frame["ImageID"]]

    def at(self, image):
        """The prepared ImageStore of a model's image settings (image.size, image.cache): every image checked, and
        cached when image.cache=true."""
        from .images import ImageStore

        side, cached = image.size, image.cache
        if (side, cached) not in self._stores:
            if not self.comp.image_dir.is_dir():
                from .errors import UserError

                raise UserError(f"{self.comp.image_dir} does not exist; image models need data_dir/data/<ImageID> "
                                "(or choose caption models only, e.g. models=bilstm,tfidf)")
            store = ImageStore(self.cfg.out / "cache" if cached else None, side)
            bad = store.prepare(self.paths(), self.cfg.worker_count(), skip_bad=self.cfg.on_bad_image == "skip")
            report_skipped(bad, self.cfg.out / "logs" / "skipped_images.txt")
            self._stores[side, cached] = store
        return self._stores[side, cached]


def train(cfg: Config, comp: Competition) -> None:
    """In a DDP run every rank comes here: image networks train on all ranks, the other models on rank 0
    alone, and only rank 0 writes folds, cache, checkpoints and artefacts (the others read them after)."""
    fold_of_row = distributed.main_first(lambda: make_folds(cfg, comp))
    order = training_order(cfg, cfg.models)
    images = ImageSource(cfg, comp, (comp.train, comp.test))
    stores = distributed.main_first(lambda: {m.name: m.spec.store(m, images) for m in order})
    main = distributed.is_main()
    if main:
        save_config(cfg, cfg.out / "oof" / "config.json")
    for model in order:
        for k in cfg.fold:
            distributed.barrier()  # every rank sees the same finished folds
            # per fold: a stack's depends on its upstream fold's features, an embed model's on its backbone
            prov = provenance(cfg, comp, model.name, k, stores[model.name])
            job = FoldJob(model.cfg, comp, fold_of_row, k, model.name, prov, stores[model.name], run_cfg=cfg,
                          training=True)
            if fold_done(cfg, comp, model.name, k, prov):
                if not cfg.force:
                    log.info(f"{job.label}: already trained with these data, folds and settings; skipping "
                             "(force=true retrains)")
                    continue
            if not (model.spec.together or main):
                continue
            if main:
                remove_temps(job.ckpt_dir)  # a kill mid-write left them; the finished fold must not carry them
            seed_everything(model.cfg.seed * 100 + k)
            start = time.time()
            with contextlib.nullcontext() if model.spec.together else distributed.alone():
                out = model.spec.run(job)
            if main:
                save_fold(cfg, comp, model.name, k, job.val_idx, out, prov, job.train_idx)
            log.info(f"{job.label}: fold {k} samples-F1 at 0.5 = {samples_f1(comp.y[job.val_idx], out.val_probs):.4f} "
                     f"on its {len(job.val_idx)} unseen rows ({time.time() - start:.0f}s)")
    distributed.barrier()
    if not main:
        return
    for model in order:
        name = model.name
        missing = [k for k in range(cfg.n_folds)
                   if not fold_done(cfg, comp, name, k, provenance(cfg, comp, name, k, stores[name]))]
        if not missing:
            oof, _, _ = collect_oof(cfg, comp, name)
            log.info(f"{name} ({describe(cfg, name)}): all {cfg.n_folds} folds done; OOF samples-F1 at 0.5 = "
                     f"{samples_f1(comp.y, oof):.4f}")
        else:
            log.info(f"{name}: folds {','.join(map(str, missing))} still to train before tune/submit")
