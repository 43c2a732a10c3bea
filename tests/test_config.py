"""key=value settings (solution.config) and the CLI's one-line errors, help and out_dir/data_dir checks."""
from __future__ import annotations

import os
from pathlib import Path
import re

import pytest

from solution.cli import COMMANDS
from solution.config import Config, iter_keys, parse_folds
from solution.settings import build_config
from solution.errors import UserError


def error_of(overrides) -> str:
    with pytest.raises(UserError) as info:
        build_config(overrides)
    return str(info.value)


# ---- parsing, in process -----------------------------------------------------------------------

def test_defaults():
    cfg = build_config([])
    assert cfg.fold == [0, 1, 2, 3, 4] and cfg.n_folds == 5 and cfg.image.size == 224 and cfg.epochs is None


def test_ints_floats_bools_strings_lists_and_dotted_keys():
    cfg = build_config(["image.size=320", "seed=7", "text.lr=1e-4", "weight_decay=0", "image.tta=true",
                        "image.pretrained=no", "force=1", "image.model=convnext_tiny", "models=tfidf, bilstm",
                        "tune.models=tfidf", "epochs=3", "batch_size=none", "device=cpu", "text.layers=2"])
    assert cfg.image.size == 320 and isinstance(cfg.image.size, int)
    assert cfg.seed == 7 and cfg.text.lr == 1e-4 and isinstance(cfg.weight_decay, float)
    assert cfg.image.tta is True and cfg.image.pretrained is False and cfg.force is True
    assert cfg.image.model == "convnext_tiny" and cfg.models == ["tfidf", "bilstm"] and cfg.tune.models == ["tfidf"]
    assert cfg.epochs == 3 and cfg.batch_size is None and cfg.device == "cpu" and cfg.text.layers == 2
    assert Config().image.size == 224  # defaults are not shared between instances


@pytest.mark.parametrize("text,want", [("3", [3]), ("0,2,4", [0, 2, 4]), ("0..4", [0, 1, 2, 3, 4]),
                                       ("4,0", [0, 4]), ("1..2,4", [1, 2, 4]), ("2,2", [2])])
def test_fold_forms(text, want):
    assert parse_folds(text) == want
    assert build_config([f"fold={text}"]).fold == want


def test_default_folds_follow_n_folds():
    assert build_config(["n_folds=2"]).fold == [0, 1]
    assert build_config(["n_folds=3", "fold=2"]).fold == [2]


@pytest.mark.parametrize("overrides,key", [
    (["imagesize=3"], "imagesize"),
    (["image.sise=3"], "image.sise"),
    (["image.size=abc"], "image.size"),
    (["image.size=3.5"], "image.size"),
    (["image.size=0"], "image.size"),
    (["patience=0"], "patience"),
    (["device=tpu"], "device"),
    (["image.tta=maybe"], "image.tta"),
    (["fold=7"], "fold"),
    (["fold=5"], "fold"),
    (["fold=-1"], "fold"),
    (["fold=a"], "fold"),
    (["fold=3..1"], "fold"),
    (["fold="], "fold"),
    (["n_folds=3", "fold=3"], "fold"),
    (["n_folds=1"], "n_folds"),
    (["n_folds=x"], "n_folds"),
    (["models=tfidf,nosuchmodel"], "models"),
    (["models="], "models"),
    (["tune.models=nope"], "tune.models"),
    (["tune.blend=max"], "tune.blend"),
    (["fusion.image_model=tfidf"], "fusion.image_model"),
    (["limit=-1"], "limit"),
    (["stop_fraction=1.5"], "stop_fraction"),
    (["image.batch_size=0"], "image.batch_size"),
    (["tune.trials=0"], "tune.trials"),
    (["tune.search=random"], "tune.search"),
    (["tune.steps=0"], "tune.steps"),
    (["report.public_fraction=0"], "report.public_fraction"),
    (["report.resamples=10"], "report.resamples"),
    (["seed=-3"], "seed"),
    (["holdout_fraction=0"], "holdout_fraction"),
    (["text.dropout=1"], "text.dropout"),
    (["num_workers=-1"], "num_workers"),
    (["num_workers=lots"], "num_workers"),
    (["num_workers=2.5"], "num_workers"),
    (["text.normaliser=lemma"], "text.normaliser"),
    (["lr"], "lr"),
])
def test_bad_settings_name_the_key(overrides, key):
    message = error_of(overrides)
    assert key in message and "\n" not in message


@pytest.mark.parametrize("cores,want", [(1, 1), (2, 2), (3, 2), (4, 2), (8, 6), (16, 14), (64, 16)])
def test_num_workers_auto_leaves_two_cores_but_keeps_two_workers_on_small_machines(monkeypatch, cores, want):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert build_config([]).num_workers == "auto" and build_config([]).worker_count() == want


def test_num_workers_auto_on_this_machine_is_bounded_by_its_cores():
    count = build_config(["num_workers=auto"]).worker_count()
    assert isinstance(count, int) and 1 <= count <= len(os.sched_getaffinity(0))


def test_an_explicit_num_workers_wins():
    assert build_config(["num_workers=0"]).worker_count() == 0
    assert build_config(["num_workers=7"]).worker_count() == 7


@pytest.mark.parametrize("raw", ["-1", "lots"])
def test_a_bad_num_workers_says_auto_is_allowed(raw):
    assert error_of([f"num_workers={raw}"]).endswith(" or auto")


def test_unknown_key_suggests_the_dotted_one():
    assert "image.size" in error_of(["size=3"])


def test_every_key_round_trips_through_key_value():
    """Each setting can be set from the command line to its own default."""
    for key, _, _, default in iter_keys():
        if key == "fold":
            raw = "0..4"
        elif isinstance(default, list):
            raw = ",".join(map(str, default))
        elif default is None:
            raw = "none"
        else:
            raw = str(default)
        if isinstance(default, list) and not default:
            continue  # empty lists (tune.models) are the default already
        cfg = build_config([f"{key}={raw}"])
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        assert value == default, key


def test_kinds_match_the_registry():
    """variants.KINDS lets a config be checked without importing torch; it must list the kinds the registry runs,
    and every built-in model must be one of them."""
    from solution.models import REGISTRY
    from solution.variants import BUILTINS, KINDS

    assert set(REGISTRY) == set(KINDS)
    assert set(BUILTINS.values()) <= set(KINDS)


# ---- the CLI: `python -m solution` (run_cli), or main() in this process (run_main) for runs that stop early ---

def test_help_lists_every_key_and_command(run_cli):
    proc = run_cli("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    for key, _, _, _ in iter_keys():
        assert any(line.strip().startswith(f"{key}=") for line in lines), key
    for command in COMMANDS:
        assert any(re.match(rf"\s+{command}\s", line) for line in lines), command


@pytest.mark.parametrize("args,needle", [
    (["train", "fold=7"], "fold"),
    (["train", "n_folds=5", "fold=5"], "fold"),
    (["train", "image.size=abc"], "image.size"),
    (["train", "device=tpu"], "device"),
    (["train", "num_workers=lots"], "num_workers"),
    (["train", "nosuchkey=1"], "nosuchkey"),
    (["tune", "n_folds=1"], "n_folds"),
    (["trian", "fold=1"], "trian"),
    (["train", "fold"], "fold"),
])
def test_cli_bad_setting_is_one_line(run_cli, assert_cli_error, tmp_path, args, needle):
    out = tmp_path / "O"
    proc = run_cli(*args, f"data_dir={tmp_path}", f"out_dir={out}")
    assert_cli_error(proc, needle)
    assert not out.exists()  # refused before anything was written


def test_cli_data_dir_missing(run_main, assert_cli_error, tmp_path, nothing_half_written):
    out = tmp_path / "O"
    proc = run_main("train", f"data_dir={tmp_path / 'nope'}", f"out_dir={out}", "models=tfidf", "n_folds=2")
    assert_cli_error(proc, "data_dir", str(tmp_path / "nope"))
    nothing_half_written(out)


def test_cli_data_dir_without_train_csv(run_main, assert_cli_error, demo_csv, tmp_path, nothing_half_written):
    (demo_csv / "train.csv").unlink()
    out = tmp_path / "O"
    proc = run_main("train", f"data_dir={demo_csv}", f"out_dir={out}", "models=tfidf", "n_folds=2")
    assert_cli_error(proc, str(demo_csv / "train.csv"))
    nothing_half_written(out)


def test_cli_out_dir_not_writable(run_main, assert_cli_error, demo_csv, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "sub"  # cannot be created, even by root
    proc = run_main("train", f"data_dir={demo_csv}", f"out_dir={out}", "models=tfidf", "n_folds=2")
    assert_cli_error(proc, "out_dir", str(out))
    assert blocker.read_text() == "not a folder"


# ---- variants ------------------------------------------------------------------------------------

GOOD_VARIANTS = """
# a second backbone at another size, and a wider Bi-LSTM
[convnext]
kind = "image"
image.model = "convnext_small.fb_in22k_ft_in1k"
image.size = 288
epochs = 10

[bilstm_long]
kind = "bilstm"
"text.max_len" = 24
text.hidden = 128
"""


def test_a_variants_file_declares_typed_settings_on_top_of_the_run(tmp_path):
    from solution.variants import model_config, settings_identity

    path = tmp_path / "v.toml"
    path.write_text(GOOD_VARIANTS)
    cfg = build_config([f"variants={path}", "models=resnet50,convnext,bilstm_long", "image.lr=1e-3"])
    assert cfg.variant["convnext"] == {"kind": "image", "image.model": "convnext_small.fb_in22k_ft_in1k",
                                       "image.size": 288, "epochs": 10}
    conv = model_config(cfg, "convnext")
    assert (conv.image.size, conv.image.lr, conv.epochs, cfg.image.size, cfg.epochs) == (288, 1e-3, 10, 224, None)
    assert model_config(cfg, "bilstm_long").text.max_len == 24
    # a built-in's identity is what earlier versions hashed: the training keys and its sections, no kind
    assert "kind" not in settings_identity(cfg, "resnet50") and settings_identity(cfg, "convnext")["kind"] == "image"


def test_the_command_line_declares_variants_too():
    from solution.variants import model_config

    cfg = build_config(["variant.wide.kind=bilstm", "variant.wide.text.hidden=256", "models=wide,bilstm"])
    assert model_config(cfg, "wide").text.hidden == 256 and model_config(cfg, "bilstm").text.hidden == 64


def test_joint_takes_its_branches_settings_from_the_models_it_names():
    from solution.variants import model_config

    cfg = build_config(["variant.big.kind=image", "variant.big.image.size=320", "variant.long.kind=bilstm",
                        "variant.long.text.max_len=30", "variant.j.kind=joint", "variant.j.joint.image_model=big",
                        "variant.j.joint.text_model=long", "variant.j.image.epochs=2", "models=j"])
    joint = model_config(cfg, "j")
    assert (joint.image.size, joint.image.epochs, joint.text.max_len) == (320, 2, 30)


@pytest.mark.parametrize("table,needles", [
    ('[a]\nkind = "imag"\n', ["variant 'a'", "kind 'imag'"]),
    ('[a]\nimage.size = 3\n', ["variant 'a'", "no kind"]),
    ('[a]\nkind = "image"\ntext.hidden = 3\n', ["variant 'a'", "text.hidden"]),
    ('[a]\nkind = "image"\nimage.size = "big"\n', ["variant 'a'", "image.size", "'big'"]),
    ('[a]\nkind = "image"\nimage.size = 0\n', ["variant 'a'", "image.size"]),
    ('[a]\nkind = "image"\nn_folds = 3\n', ["variant 'a'", "n_folds"]),
    ('[bilstm]\nkind = "bilstm"\n', ["variant 'bilstm'", "taken"]),
    ('[Blend]\nkind = "image"\n', ["variant 'Blend'", "taken"]),
    ('["a/b"]\nkind = "image"\n', ["variant 'a/b'", "name"]),
    ('[f]\nkind = "fusion"\nfusion.image_model = "tfidf"\n', ["variant 'f'", "fusion.image_model", "'tfidf'"]),
    ('[a]\nkind = "image"\n[a]\n', ["not valid TOML", "line 3"]),
    ('a = 3\n', ["'a'", "table"]),
])
def test_a_bad_declaration_names_file_variant_and_key(tmp_path, table, needles):
    path = tmp_path / "v.toml"
    path.write_text(table)
    with pytest.raises(UserError) as err:
        build_config([f"variants={path}"])
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_a_variant_declared_twice_or_never_is_refused(tmp_path):
    path = tmp_path / "v.toml"
    path.write_text('[a]\nkind = "image"\n')
    with pytest.raises(UserError, match="declared there and on the command line"):
        build_config([f"variants={path}", "variant.a.kind=image"])
    with pytest.raises(UserError, match="bad value for models: 'b'"):
        build_config([f"variants={path}", "models=a,b"])
    with pytest.raises(UserError, match="bad value for tune.models: 'a' is listed twice"):
        build_config([f"variants={path}", "models=a,bilstm", "tune.models=a,a"])


def test_cli_bad_variant_file_is_one_line_before_anything_is_written(run_cli, assert_cli_error, tmp_path):
    path = tmp_path / "v.toml"
    path.write_text('[convnext]\nkind = "image"\nimage.sise = 288\n')
    out = tmp_path / "O"
    proc = run_cli("train", f"data_dir={tmp_path}", f"out_dir={out}", f"variants={path}", "models=convnext")
    assert_cli_error(proc, str(path), "variant 'convnext'", "image.sise")
    assert not out.exists()


@pytest.mark.parametrize("name", ["gpu.toml", "captions.toml", "embed.toml"])
def test_the_shipped_variants_files_are_valid_and_name_real_timm_weights(name):
    import timm

    path = Path(__file__).resolve().parents[1] / "variants" / name
    cfg = build_config([f"variants={path}"])
    assert cfg.variant
    build_config([f"variants={path}", f"models={','.join(['resnet50', 'bilstm', *cfg.variant])}"])
    known = set(timm.list_pretrained())
    for table in cfg.variant.values():
        for key in ("image.model", "embed.model"):
            if key in table:
                assert table[key] in known, table


def test_cli_a_variant_whose_backbone_cannot_be_built_is_one_line_naming_it(run_main, assert_cli_error, demo_csv,
                                                                                tmp_path):
    proc = run_main("train", f"data_dir={demo_csv}", f"out_dir={tmp_path / 'O'}", "variant.cx.kind=image",
                    "variant.cx.image.model=convnext_smal", "models=cx")
    assert_cli_error(proc, "variant cx:", "image.model", "convnext_smal", "variant.cx.KEY=VALUE")
    assert not (tmp_path / "O" / "folds").exists()
