"""The naive-Bayes scaled logistic regression behind `tfidf` (text.tfidf_nb)."""
import pickle

import numpy as np
from scipy.sparse import csr_matrix

from solution.models.tfidf import NBLogisticRegression


def test_ratio_is_the_smoothed_log_count_ratio():
    X = csr_matrix(np.array([[2.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 3.0, 1.0], [0.0, 1.0, 1.0]]))
    y = np.array([1, 1, 0, 0])
    model = NBLogisticRegression(C=1.0, alpha=1.0).fit(X, y)
    pos, neg = np.array([4.0, 1.0, 3.0]), np.array([1.0, 5.0, 3.0])  # alpha + column sums per class
    np.testing.assert_allclose(model.ratio_, np.log(pos / pos.sum()) - np.log(neg / neg.sum()))
    assert model.ratio_[0] > 0 > model.ratio_[1]  # the positives' word counts for the label, the negatives' against


def test_separates_a_marker_word_and_keeps_the_sklearn_contract():
    rng = np.random.default_rng(0)
    noise = rng.random((200, 20)) * (rng.random((200, 20)) < 0.2)
    y = (rng.random(200) < 0.3).astype(int)
    noise[:, 0] = y  # feature 0 appears exactly in the positive rows
    model = NBLogisticRegression(C=4.0).fit(csr_matrix(noise), y)
    probs = model.predict_proba(csr_matrix(noise))
    assert probs.shape == (200, 2) and list(model.classes_) == [0, 1]
    assert probs[y == 1, 1].min() > probs[y == 0, 1].max()


def test_survives_the_pickle_that_predict_reloads():
    X = csr_matrix(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.5]]))
    y = np.array([1, 0, 1, 0])
    model = NBLogisticRegression().fit(X, y)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict_proba(X), model.predict_proba(X))
