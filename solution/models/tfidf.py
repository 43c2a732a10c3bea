"""`tfidf`: word n-gram TF-IDF and one-vs-rest logistic regression; fast, strong, and different.

With text.tfidf_nb each label's regression sees the features scaled by their naive-Bayes log-count ratio
(NBSVM, Wang & Manning 2012): words that mark the label weigh more before the regularised fit.
"""
from __future__ import annotations

import pickle

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline

from ..artefacts import atomic_path
from ..context import FoldJob, FoldOutput
from ..errors import UserError
from ..text import preprocessor
from .spec import ModelSpec


class NBLogisticRegression(ClassifierMixin, BaseEstimator):
    """Binary logistic regression on features scaled by log(p/q), p and q the smoothed, normalised
    feature sums over positive and negative training rows."""

    def __init__(self, C: float = 1.0, alpha: float = 1.0):
        self.C = C
        self.alpha = alpha

    def fit(self, X, y):
        y = np.asarray(y)
        pos = self.alpha + np.asarray(X[y == 1].sum(axis=0)).ravel()
        neg = self.alpha + np.asarray(X[y != 1].sum(axis=0)).ravel()
        self.ratio_ = np.log(pos / pos.sum()) - np.log(neg / neg.sum())
        self.lr_ = LogisticRegression(C=self.C, solver="liblinear").fit(X.multiply(self.ratio_).tocsr(), y)
        self.classes_ = self.lr_.classes_
        return self

    def predict_proba(self, X):
        return self.lr_.predict_proba(X.multiply(self.ratio_).tocsr())


def _texts(cfg, frame) -> list[str]:
    pre = preprocessor(cfg)
    return [" ".join(pre(c)) for c in frame["Caption"]]


def run(job: FoldJob) -> FoldOutput:
    cfg, comp = job.cfg, job.comp
    texts = _texts(cfg, comp.train)
    t = cfg.text
    model = make_pipeline(  # liblinear: one small convex fit per label, single-threaded and quicker than lbfgs here
        TfidfVectorizer(ngram_range=(1, t.tfidf_ngram), min_df=t.tfidf_min_df, sublinear_tf=True, token_pattern=r"\S+"),
        OneVsRestClassifier(NBLogisticRegression(C=t.tfidf_c) if t.tfidf_nb else LogisticRegression(C=t.tfidf_c, solver="liblinear")))
    train_texts = [texts[i] for i in job.train_idx]
    try:
        model.fit(train_texts, comp.y[job.train_idx])
    except ValueError as err:  # the one data-dependent bound: min_df above the captions, or no n-gram kept
        if "min_df" not in str(err) and "no terms remain" not in str(err):
            raise
        raise UserError(f"{job.label}: text.tfidf_min_df={t.tfidf_min_df} keeps no n-gram of its {len(train_texts)} "
                        "training captions; lower text.tfidf_min_df") from None
    with atomic_path(job.ckpt_dir / "model.pkl") as tmp:
        tmp.write_bytes(pickle.dumps(model))
    val_probs = model.predict_proba([texts[i] for i in job.val_idx])
    test_probs = model.predict_proba(_texts(cfg, comp.test))
    return FoldOutput(val_probs, test_probs, float("nan"), 0)


def infer(job: FoldJob, frame, upstream):
    model = pickle.loads((job.ckpt_dir / "model.pkl").read_bytes())  # our own file, written by run()
    return model.predict_proba(_texts(job.cfg, frame)).astype(np.float32), None  # as training saved them


SPEC = ModelSpec(kind="tfidf", run=run, infer=infer)
