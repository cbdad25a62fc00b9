"""The one override parser: `section.key=value` on the command line, typed.

    apply_overrides(cfg, ["optimization.max_update=1000"], known=valid_keys(cfg))

A key must be one of `known` (an unknown key is an error listing the valid keys nearest to
it); the value is read as YAML and must keep the type of the default it replaces (an int
stays an int, a list stays a list, a mapping is merged). The fairseq fork's value forms are
read too: a float accepts `1e-06` (text to PyYAML), a number accepts a one-element list
(`optimization.lr=[0.0005]`, fairseq's per-epoch lists), and a string key takes the text as
written when it is not YAML (`model.conv_feature_layers=[(64,10,5)] + [(64,3,2)] * 4`).
`tera pretrain` takes overrides as fairseq-hydra arguments, `tera downstream -o` as s3prl's
one string (`s3prl_overrides`). Every mistake is one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from tera.errors import UserError

_MISSING = object()


def s3prl_overrides(text: str | None) -> list[str]:
    """s3prl's `-o "config.optimizer.lr=1e-4,,config.runner.total_steps=10"` as a list of
    `key=value` (the `config.` prefix dropped)."""
    if not text:
        return []
    return [part.strip().removeprefix("config.") for part in text.split(",,") if part.strip()]


class _Unparsed(str):
    """Override text that is not YAML: fine for a string key, an error for any other."""

    reason = ""


def parse_override(override: str, what: str = "config") -> tuple[str, Any]:
    """`section.key=value` -> (key, value read as YAML; "" stays ""; text that is not YAML
    comes back as `_Unparsed`, for `coerce` to accept or refuse)."""
    if "=" not in override:
        raise UserError(f"{what} override {override!r} is not of the form section.key=value")
    key, text = override.split("=", 1)
    key = key.strip().lstrip("+").removeprefix("config.")
    try:
        value = yaml.safe_load(text) if text.strip() != "" else ""
    except yaml.YAMLError as err:
        value = _Unparsed(text)
        value.reason = " ".join(str(err).split())  # YAML's message, on one line
    return key, value


def leaf_keys(cfg: DictConfig | dict, prefix: str = "") -> list[str]:
    """Every dotted key of a config tree, inner ones included ("runner", "runner.lr")."""
    tree = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else cfg
    keys = []
    for name, value in tree.items():
        keys.append(f"{prefix}{name}")
        if isinstance(value, dict):
            keys += leaf_keys(value, f"{prefix}{name}.")
    return keys


def apply_overrides(cfg: DictConfig, overrides: Iterable[str], *,
                    known: Iterable[str] | None = None,
                    default_of: Callable[[str], Any] | None = None,
                    what: str = "config") -> DictConfig:
    """Apply `key=value` overrides to `cfg` in place (and return it).

    known: the keys that may be set (default: the keys `cfg` has). default_of: the default
    of a known key `cfg` does not hold, for its type. what: how errors name the config."""
    known = sorted(set(leaf_keys(cfg) if known is None else known))
    for override in overrides:
        key, value = parse_override(override, what)
        if key not in known:
            raise UserError(f"unknown {what} key {key!r}; valid keys near it: "
                            f"{', '.join(_near(key, known))}")
        default = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
        if default is _MISSING or default is None:
            default = default_of(key) if default_of is not None else None
        value = coerce(key, value, default, what)
        merge = isinstance(value, dict)
        OmegaConf.update(cfg, key, value, merge=merge, force_add=True)
    return cfg


def _near(key: str, known: list[str]) -> list[str]:
    near = difflib.get_close_matches(key, known, n=6, cutoff=0.5)
    section = key.split(".", 1)[0]
    same_section = [k for k in known if k.startswith(section + ".")]
    return near or same_section[:12] or sorted({k.split(".")[0] for k in known})


def coerce(key: str, value: Any, default: Any, what: str = "config") -> Any:
    """`value` as the type of `default` (None: any value), or a one-line `UserError`."""
    if OmegaConf.is_config(default):
        default = OmegaConf.to_container(default)
    if isinstance(value, _Unparsed) and not isinstance(default, str):
        raise UserError(f"{what} key {key!r}: cannot read the value {str(value)!r} "
                        f"({value.reason})")
    if default is None:  # unset (`???`) or optional: any value
        return str(value) if isinstance(value, _Unparsed) else value
    expected = type(default)
    if expected in (bool, int, float) and isinstance(value, list) and len(value) == 1:
        value = value[0]  # fairseq writes per-epoch values as lists: lr: [0.0005]
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as text
            try:
                return float(value)
            except ValueError:
                pass
    elif expected is str:
        if isinstance(value, _Unparsed):
            return str(value)  # e.g. an unquoted conv_feature_layers
        if not isinstance(value, (dict, list)):
            return str(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, list):
            return value
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    else:
        return value
    kind = {bool: "a boolean", int: "an int", float: "a number", str: "a string",
            list: "a list", tuple: "a list", dict: "a mapping"}.get(expected, expected.__name__)
    raise UserError(f"{what} key {key!r} expects {kind}, got {value!r}")
