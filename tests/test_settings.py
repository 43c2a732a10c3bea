"""Every setting against its declaration (solution/config.py): walks generated from the config itself, so a key
added later is covered the day it is added.

For each key of ./run.sh --help, values of the wrong type and values outside its declared range, choices or
predicate are refused by the CLI's main in one line naming the key, exit code 2, no traceback and nothing
written: set directly, in a variant on the command line and in a variants file, whichever models the run
selects. Everything here stops before any data is read, so the whole walk takes a few seconds.
"""
from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from solution import cli
from solution.config import Allows, Config, base_type, get_key, iter_keys, output_free_keys
from solution.settings import build_config
from solution.variants import BUILTINS, KINDS, allowed_keys

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

KEYS = [(key, f, hint) for key, f, hint, _ in iter_keys()]
WRONG_TYPE = {int: ("abc", "1.5", "true"), float: ("abc", "nan", "inf", "-inf"), bool: ("maybe", "2"), list: (),
              str: ()}


def refused_values(f, hint) -> list[str]:
    """key=value texts the setting's type or declaration refuses: derived from the declaration's own bounds,
    choices and refused examples, so a narrowed or widened range is walked as declared."""
    allows, base = f.metadata["allows"], base_type(hint)
    bad = list(WRONG_TYPE[base])
    step = 1 if base is int else 0.5
    if allows.low is not None:
        bad.append(str(allows.low if allows.ends[0] == "(" else allows.low - step))
    if allows.high is not None:
        bad.append(str(allows.high if allows.ends[1] == ")" else allows.high + step))
    if allows.choices:
        bad.append(str(max(allows.choices) + 1) if base is int else "not-a-choice")
    return bad + list(allows.refused)


def _main(run_main, *args) -> tuple[int, str]:
    """cli.main in this process (a traceback would fail the test), with its stderr."""
    proc = run_main(*args)
    assert proc.stdout == ""
    return proc.returncode, proc.stderr


def _assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_every_key_has_a_declaration():
    undeclared = [key for key, f, _ in KEYS if not isinstance(f.metadata.get("allows"), Allows)]
    assert not undeclared, f"declare what these keys allow beside their defaults in solution/config.py: {undeclared}"


def test_the_walk_covers_every_key_of_help():
    listed = {m.group(1) for line in cli.usage().splitlines() if (m := re.match(r"  (\S+?)=", line))}
    assert listed - {"variant.NAME.KEY"} == {key for key, _, _ in KEYS}


def test_every_default_is_allowed_and_every_refusal_is_walked():
    build_config([])  # the defaults pass their own declarations
    for key, f, hint in KEYS:
        allows = f.metadata["allows"]
        free = base_type(hint) in (str, list) and not (allows.choices or allows.refused)
        assert refused_values(f, hint) or free, f"{key}: nothing to refuse, yet it is not declared as free text"


def test_every_key_refuses_values_outside_its_declaration(run_main, tmp_path):
    """Set directly, with models=tfidf: image, embed, fusion, tune ... keys of models not selected are checked too."""
    out = tmp_path / "O"
    walked = 0
    for key, f, hint in KEYS:
        for raw in refused_values(f, hint):
            code, err = _main(run_main, "train", f"{key}={raw}", f"data_dir={tmp_path / 'no-data'}", f"out_dir={out}",
                              "models=tfidf")
            _assert_one_line(code, err, f"bad value for {key}:", "allowed:")
            walked += 1
    assert walked > 3 * len(KEYS) and not out.exists()  # refused before anything was written


def _variant_keys():
    """(kind, key) for every key some variant kind may set, each once."""
    seen = {}
    for kind in KINDS:
        for key in allowed_keys(kind):
            seen.setdefault(key, kind)
    return [(kind, key) for key, kind in seen.items()]


def test_every_variant_key_refuses_values_outside_its_declaration(run_main, tmp_path):
    """Declared on the command line and in a variants file, in a variant the run does not select."""
    fields = {key: (f, hint) for key, f, hint in KEYS}
    out = tmp_path / "O"
    for kind, key in _variant_keys():
        for raw in refused_values(*fields[key]):
            code, err = _main(run_main, "train", "variant.v.kind=" + kind, f"variant.v.{key}={raw}", f"out_dir={out}",
                              "models=tfidf")
            _assert_one_line(code, err, "variant 'v'", f"bad value for {key}:")
            try:  # as TOML writes it: a number, a boolean or nan/inf typed, anything else a string
                tomllib.loads(f"x = {raw}")
                value = raw
            except tomllib.TOMLDecodeError:
                value = json.dumps(raw)
            path = tmp_path / "v.toml"
            path.write_text(f'[v]\nkind = "{kind}"\n"{key}" = {value}\n')
            code, err = _main(run_main, "train", f"variants={path}", f"out_dir={out}", "models=tfidf")
            _assert_one_line(code, err, str(path), "variant 'v'", key)
    assert not out.exists()


def test_a_cli_process_refuses_a_library_range_in_one_line(run_cli, assert_cli_error, tmp_path):
    """The ranges scikit-learn and torch would otherwise refuse with a traceback (or train on without a word)."""
    for setting in ("text.tfidf_c=0", "text.head_dropout=1.5", "image.lr=-1"):
        assert_cli_error(run_cli("train", setting, f"out_dir={tmp_path / 'O'}"), setting.split("=")[0])


# ---- keys that cannot change a model's outputs stay out of its provenance hash ----------------------------

def _image_cache_serves_what_decoding_serves(tmp_path, noise_images):
    from solution.images import ImageStore

    paths = noise_images(5)
    cached = ImageStore(tmp_path / "cache", 32)
    cached.prepare(paths, workers=0, skip_bad=False)
    direct = ImageStore(None, 32)
    for path in paths:
        np.testing.assert_array_equal(cached.get(path), direct.get(path))


def _embed_batch_size_reads_the_same_embeddings(tmp_path, noise_images):
    """The cache keeps one embedding per image and backbone whatever the batch that computed it (other batch sizes
    on a cold cache differ in the last float bits only), so another embed.batch_size embeds nothing again."""
    import torch

    from solution.models import embed
    from solution.models.image import load_backbone

    paths = noise_images(5)
    found = []
    for size in (2, 64):
        cfg = build_config([f"out_dir={tmp_path / 'out'}", "embed.model=test_resnet", "embed.pretrained=false",
                            "embed.size=32", f"embed.batch_size={size}", "num_workers=0", "device=cpu"])
        torch.manual_seed(0)
        net = embed.FrozenNet(load_backbone(cfg.embed, "embed"))
        store = embed.Embeddings(cfg, net, embed.preprocessing(net.backbone, cfg.embed.size))
        found.append((store.identity, store.matrix(paths)))
    assert found[0][0] == found[1][0]
    np.testing.assert_array_equal(found[0][1], found[1][1])


SAME_OUTPUTS = {"image.cache": _image_cache_serves_what_decoding_serves,
                "embed.batch_size": _embed_batch_size_reads_the_same_embeddings}


def _other_value(key: str):
    value = get_key(Config(), key)
    return (not value) if isinstance(value, bool) else value + 1


@pytest.mark.parametrize("key", sorted({*output_free_keys(), *SAME_OUTPUTS}))
def test_a_key_that_cannot_change_outputs_retrains_nothing(key, tmp_path, noise_images):
    from solution.oof import settings_hash

    assert key in SAME_OUTPUTS, f"{key} is declared outputs=False: add the check that its outputs are the same"
    assert key in output_free_keys(), f"{key} cannot change outputs: declare it outputs=False beside its default"
    before, after = build_config([]), build_config([f"{key}={str(_other_value(key)).lower()}"])
    for model in BUILTINS:
        assert settings_hash(before, model) == settings_hash(after, model), (key, model)
    SAME_OUTPUTS[key](tmp_path, noise_images)


def test_keys_that_can_change_outputs_are_hashed():
    from solution.oof import settings_hash

    base = build_config([])
    for setting in ("image.size=225", "embed.model=test_resnet", "text.hidden=65", "image.compile=true", "seed=1"):
        changed = build_config([setting])
        assert any(settings_hash(base, m) != settings_hash(changed, m) for m in BUILTINS), setting


def test_a_tfidf_min_df_above_every_caption_count_is_one_line(run_main, demo_csv, tmp_path):
    """The one library bound that depends on the data, not the setting alone: refused where the fold is fitted."""
    code, err = _main(run_main, "train", f"data_dir={demo_csv}", f"out_dir={tmp_path / 'O'}", "models=tfidf", "n_folds=2",
                      "text.tfidf_min_df=1000")
    assert code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: tfidf fold 0: text.tfidf_min_df=1000 keeps no n-gram"), line
