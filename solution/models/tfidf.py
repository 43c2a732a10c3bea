"""`tfidf`: word n-gram TF-IDF and one-vs-rest logistic regression; fast, strong, and different."""
from __future__ import annotations

import pickle

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline

from ..artefacts import atomic_path
from ..context import FoldJob
from ..text import preprocessor
from . import FoldOutput, ModelSpec


def _texts(cfg, frame) -> list[str]:
    pre = preprocessor(cfg)
    return [" ".join(pre(c)) for c in frame["Caption"]]


def run(job: FoldJob) -> FoldOutput:
    cfg, comp = job.cfg, job.comp
    texts = _texts(cfg, comp.train)
    t = cfg.text
    model = make_pipeline(  # liblinear: one small convex fit per label, single-threaded and quicker than lbfgs here
        TfidfVectorizer(ngram_range=(1, t.tfidf_ngram), min_df=t.tfidf_min_df, sublinear_tf=True, token_pattern=r"\S+"),
        OneVsRestClassifier(LogisticRegression(C=t.tfidf_c, solver="liblinear")))
    model.fit([texts[i] for i in job.train_idx], comp.y[job.train_idx])
    with atomic_path(job.ckpt_dir / "model.pkl") as tmp:
        tmp.write_bytes(pickle.dumps(model))
    val_probs = model.predict_proba([texts[i] for i in job.val_idx])
    test_probs = model.predict_proba(_texts(cfg, comp.test))
    return FoldOutput(val_probs, test_probs, float("nan"), 0)


def infer(job: FoldJob, frame, upstream):
    model = pickle.loads((job.ckpt_dir / "model.pkl").read_bytes())  # our own file, written by run()
    return model.predict_proba(_texts(job.cfg, frame)), None


SPEC = ModelSpec(name="tfidf", kind="caption", sections=("text",), run=run, infer=infer)
