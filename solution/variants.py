"""Named model variants: several models of one kind (two backbones, two Bi-LSTM shapes) trained on the same
folds and blended, each under its own name.

A variant is a name, a kind and the settings that make it differ from the run's: declared in a TOML file
(`variants=FILE`, one table per name) or on the command line (`variant.NAME.kind=KIND`,
`variant.NAME.KEY=VALUE`). Its settings sit on top of the run's (defaults and `key=value` overrides), so a
variant says only what makes it different. The built-in models are variants that say nothing: `resnet50` is
the image kind with the run's image.* settings. Everything here is torch-free, so a bad declaration is
refused in a tenth of a second; models.REGISTRY holds each kind's code. It reads keys through solution.config
(which knows nothing of variants); solution.settings builds a run's config from both.
"""
from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import check_settings, convert_setting, iter_keys, output_free_keys, set_key
from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (older Kaggle images): the same parser from PyPI
    import tomli as tomllib


@dataclass(frozen=True)
class Kind:
    sections: tuple[str, ...]  # config sections its artefacts depend on; a variant may set their keys
    features: bool  # its folds save pooled features, so fusion can stack on it
    selects: tuple[str, ...] = ()  # sections that only name other models to take settings from (not hashed)
    stacks: bool = False  # it reads the fold features of the models named by upstream_names (fusion)


KINDS: dict[str, Kind] = {
    "image": Kind(("image",), True),  # a timm backbone fine-tuned end to end on the images
    "embed": Kind(("embed",), True),  # a frozen timm backbone: every image embedded once, an MLP head per fold
    "bilstm": Kind(("text",), True),  # the caption Bi-LSTM on pretrained word vectors
    "tfidf": Kind(("text",), False),  # word n-gram TF-IDF with one-vs-rest logistic regression
    "minilm": Kind(("text",), False),  # all-MiniLM-L6-v2 sentence embeddings with an MLP head, or fine-tuned
    "fusion": Kind(("fusion",), False, stacks=True),  # an MLP on the fold features of fusion.image_model and fusion.text_model
    # an image backbone and a caption Bi-LSTM trained together under one head; image.* from joint.image_model,
    # text.* from joint.text_model, then its own settings
    "joint": Kind(("image", "text"), False, selects=("joint",)),
}

# The models every run knows by name: each is its kind with the run's settings ("resnet50" for the image
# kind, whatever image.model says, so the commands and out_dirs of earlier versions keep working).
BUILTINS: dict[str, str] = {"resnet50": "image", "embed": "embed", "bilstm": "bilstm", "tfidf": "tfidf", "minilm": "minilm",
                            "fusion": "fusion", "joint": "joint"}

# Top-level settings every trained model depends on: its artefacts are stale when one of them changes.
TRAINING_KEYS = ("seed", "n_folds", "limit", "epochs", "batch_size", "patience", "stop_fraction", "optimizer",
                 "scheduler", "weight_decay", "grad_clip", "loss", "pos_weight", "pos_weight_max", "on_bad_image")
# Those that define the data and folds all models share; a variant may set the rest.
SHARED_KEYS = ("n_folds", "limit", "on_bad_image")
VARIANT_TRAINING_KEYS = tuple(k for k in TRAINING_KEYS if k not in SHARED_KEYS)

# The kinds that read one modality alone: tune also blends each group on its own, so a report can say what a
# second backbone adds to the first, or a second caption model to the first.
MODALITIES = {"image models": ("image", "embed"), "caption models": ("bilstm", "tfidf", "minilm")}

RESERVED = ("blend", "figures")  # the blend's own rows and files, and the report's figures folder under oof/
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a folder name under oof/ and checkpoints/


def known_names(cfg) -> list[str]:
    return [*BUILTINS, *cfg.variant]


def kind_of(cfg, name: str) -> str:
    if name in BUILTINS:
        return BUILTINS[name]
    if name in cfg.variant:
        return cfg.variant[name]["kind"]
    raise UserError(f"unknown model '{name}'; allowed: {', '.join(known_names(cfg))} (or declare it as a variant)")


def own_settings(cfg, name: str) -> dict:
    """The settings a declared variant sets itself (they win over the run's); none for a built-in."""
    return {k: v for k, v in cfg.variant.get(name, {}).items() if k != "kind"}


def model_config(cfg, name: str):
    """The run's config with `name`'s own settings on top: what its folds train with and are hashed by."""
    out = copy.deepcopy(cfg)
    if kind_of(cfg, name) == "joint":  # whole sections taken from the models it names, then its own settings on top
        names = upstream_names(cfg, name)
        out.image = model_config(cfg, names["joint.image_model"]).image
        out.text = model_config(cfg, names["joint.text_model"]).text
    _apply(out, own_settings(cfg, name))
    return out


def _apply(cfg, settings: dict) -> None:
    for key, value in settings.items():
        set_key(cfg, key, value)


def settings_identity(cfg, name: str) -> dict:
    """What `name`'s artefacts depend on among the settings: the training keys and its kind's sections of its
    resolved config, less the keys declared outputs=False (they cannot change a prediction), plus the kind of
    a declared variant (a built-in's identity is otherwise what earlier versions hashed)."""
    kind = kind_of(cfg, name)
    resolved = model_config(cfg, name).to_dict()
    identity = {k: resolved[k] for k in (*TRAINING_KEYS, *KINDS[kind].sections)}
    for key in output_free_keys():
        section, _, leaf = key.rpartition(".")
        (identity.get(section, {}) if section else identity).pop(leaf, None)
    if name not in BUILTINS:
        identity["kind"] = kind
    return identity


def describe(cfg, name: str) -> str:
    """One line that says what a model is: its kind, the backbone where it has one, and what its variant sets."""
    kind = kind_of(cfg, name)
    resolved = model_config(cfg, name)
    what = kind
    if kind in ("image", "joint"):
        what += f": {resolved.image.model} @ {resolved.image.size} px"
    elif kind == "embed":
        what += f": {resolved.embed.model}, frozen"
    elif kind == "fusion":
        what += f": on {' and '.join(upstream_names(cfg, name).values())}"
    settings = own_settings(cfg, name)
    if settings:
        what += "; " + ", ".join(f"{k}={v}" for k, v in settings.items())
    return what


# ---- declaring ---------------------------------------------------------------------------------------

def declare(cfg, cli: dict[str, dict[str, str]]) -> None:
    """Read cfg.variants (a TOML file) and the command line's variant.NAME.KEY=VALUE items, check every
    declaration, and store them, typed, in cfg.variant (so the saved config holds them)."""
    found: dict[str, tuple[str, dict]] = {}  # name -> (where it was declared, raw settings)
    if cfg.variants:
        path = Path(cfg.variants)
        for name, table in _read_file(path).items():
            found[name] = (str(path), table)
    for name, table in cli.items():
        if name in found:
            raise UserError(f"{found[name][0]}: variant '{name}' is declared there and on the command line; "
                            "keep one of the two")
        found[name] = ("command line", table)
    cfg.variant = {name: _checked(cfg, where, name, table) for name, (where, table) in found.items()}
    for name, (where, _) in found.items():
        _check_upstream(cfg, name, where)


def _read_file(path: Path) -> dict[str, dict]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"variants={path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"variants={path}: cannot read it ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML ({err})") from None
    tables = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise UserError(f"{path}: '{name}' is not a variant table; write [{name}] with kind = ... and its settings")
        tables[name] = _flatten(table)
    return tables


def _flatten(table: dict, prefix: str = "") -> dict:
    """TOML's dotted keys (image.size = 288) come as nested tables; the config speaks in dotted keys."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def allowed_keys(kind: str) -> list[str]:
    sections = (*KINDS[kind].sections, *KINDS[kind].selects)
    return [*VARIANT_TRAINING_KEYS, *(key for key, *_ in iter_keys() if key.split(".")[0] in sections)]


def _checked(cfg, where: str, name: str, table: dict) -> dict:
    """The declaration with every value converted as a key=value would be, or a one-line error naming where
    it was declared, the variant and the key."""
    at = f"{where}: variant '{name}'"
    if not NAME.fullmatch(name):
        raise UserError(f"{at}: a name must start with a letter or digit and hold only letters, digits, '_' and '-'")
    if name in BUILTINS or name in KINDS or name.lower() in RESERVED:
        raise UserError(f"{at}: the name is taken by a built-in model, a kind or the blend ('{name}'); choose another name")
    kind = table.get("kind")
    if kind not in KINDS:
        shown = f"kind '{kind}' is unknown" if kind is not None else "no kind given"
        raise UserError(f"{at}: {shown}; set kind to one of {', '.join(KINDS)}")
    allowed = allowed_keys(kind)
    settings = {}
    for key, raw in table.items():
        if key == "kind":
            continue
        if key not in allowed:
            sections = ", ".join(f"{s}.*" for s in (*KINDS[kind].sections, *KINDS[kind].selects))
            raise UserError(f"{at}: key '{key}' does not apply to kind {kind}; allowed: {sections} and "
                            f"{', '.join(VARIANT_TRAINING_KEYS)}")
        text = str(raw).lower() if isinstance(raw, bool) else str(raw)
        settings[key] = convert_setting(key, text, prefix=f"{at}: ")
    resolved = copy.deepcopy(cfg)
    _apply(resolved, settings)
    check_settings(resolved, prefix=f"{at}: ")
    return {"kind": kind, **settings}


UPSTREAM = {"fusion": {"image_model": "features", "text_model": "features"},
            "joint": {"image_model": "image", "text_model": "bilstm"}}  # section -> key -> kind(s) it names


def stacked_on(cfg, name: str) -> list[str]:
    """The models whose fold features `name` stacks on (a fusion's two; none for other kinds)."""
    return list(upstream_names(cfg, name).values()) if KINDS[kind_of(cfg, name)].stacks else []


def upstream_names(cfg, name: str) -> dict[str, str]:
    """The models a stack (fusion) or joint model takes from, by dotted key: its own setting or the run's."""
    kind = kind_of(cfg, name)
    own = cfg.variant.get(name, {})
    return {f"{kind}.{leaf}": own.get(f"{kind}.{leaf}", getattr(getattr(cfg, kind), leaf))
            for leaf in UPSTREAM.get(kind, {})}


def _check_upstream(cfg, name: str, where: str) -> None:
    """The models a fusion or joint model names must exist and be of the kinds it reads."""
    for key, value in upstream_names(cfg, name).items():
        want = UPSTREAM[kind_of(cfg, name)][key.split(".")[1]]
        kinds = [k for k, kind in KINDS.items() if kind.features] if want == "features" else [want]
        fitting = [m for m in known_names(cfg) if kind_of(cfg, m) in kinds]
        if value not in fitting:
            at = f"{where}: variant '{name}': " if where else ""
            raise UserError(f"{at}bad value for {key}: '{value}'; allowed: a model of kind {' or '.join(kinds)} "
                            f"({', '.join(fitting)})")


def check_stacks(cfg) -> None:
    """The run's own fusion.* and joint.* names (what the built-in fusion and joint take)."""
    for name in ("fusion", "joint"):
        _check_upstream(cfg, name, "")


def modality_groups(cfg, names: list[str]) -> dict[str, list[str]]:
    """{"image models": [...], ...}: each modality with at least two of `names`, unless it holds them all (then its
    blend is the blend)."""
    groups = {group: [n for n in names if kind_of(cfg, n) in kinds] for group, kinds in MODALITIES.items()}
    return {group: members for group, members in groups.items() if 2 <= len(members) < len(names)}
