"""A run's settings from its command line: the `key=value` items (solution/config.py), then the declared
variants (solution/variants.py), then the settings that name folds and models; every check before any data
is read. It stands above both modules: config knows no variants, and variants read keys through config."""
from __future__ import annotations

from .config import Config, apply_overrides
from .errors import UserError
from .variants import check_stacks, declare, known_names


def build_config(overrides: list[str], base: Config | None = None) -> Config:
    """Apply `key=value` overrides to the defaults (or to `base`, a saved run's config), then read the declared
    variants (variants=FILE and variant.NAME.KEY=VALUE; a base keeps its own unless the overrides declare some);
    any unknown key or bad value is a one-line UserError."""
    cfg, given, declared = apply_overrides(overrides, base)
    if base is None or declared or "variants" in given:
        declare(cfg, declared)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """The settings that name folds and models: folds within n_folds, every model known, stacks well-fed."""
    bad = [k for k in cfg.fold if not 0 <= k < cfg.n_folds]
    if bad:
        raise UserError(f"bad value for fold: {bad[0]}; allowed: 0..{cfg.n_folds - 1} (n_folds={cfg.n_folds})")
    names = known_names(cfg)
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
