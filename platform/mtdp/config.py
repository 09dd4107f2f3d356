"""Dataclass configs loadable from YAML and command-line flags — one mechanism for every job.

Precedence: dataclass defaults < YAML file (``--config``) < flags given on the command line.
Each field becomes a ``--field-name`` flag; its help is the field's ``metadata["help"]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def cache_root() -> Path:
    """mtdp's cache folder (UniRep weights, built kernels): ``$MTDP_CACHE`` or
    ``~/.cache/mtdp``."""
    return Path(os.environ.get("MTDP_CACHE") or Path.home() / ".cache" / "mtdp")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(tp: Any):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _converter(args[0]) if len(args) == 1 else str

        def opt(text: str):
            return None if text.lower() in ("none", "null", "") else inner(text)
        return opt
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    # lists / dicts: YAML (a superset of JSON) on the command line, e.g. --teachers '[a, b]'
    return yaml.safe_load


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` (default ``SUPPRESS``, so only flags the
    user actually gave override YAML/defaults)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else None)
        help_text = f.metadata.get("help", "")
        parser.add_argument(_flag(f.name), dest=f.name, type=_converter(hints[f.name]),
                            default=argparse.SUPPRESS, metavar=f.name.upper(),
                            help=f"{help_text} (default: {json.dumps(default, default=str)})")


def load_config(cls: type[T], yaml_path: str | Path | None = None,
                args: argparse.Namespace | dict | None = None) -> T:
    """Build ``cls`` from defaults, then a YAML file, then parsed CLI ``args``.

    Raises:
        ValueError: a YAML key that is not a field of ``cls`` (typos must not pass silently).
    """
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if yaml_path:
        data = yaml.safe_load(Path(yaml_path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{yaml_path}: expected a mapping of config fields")
        data = {k.replace("-", "_"): v for k, v in data.items()}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{yaml_path}: unknown field(s) {sorted(unknown)}; valid: "
                             f"{sorted(names)}")
        values.update(data)
    if args is not None:
        given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        values.update({k: v for k, v in given.items() if k in names})
    return cls(**values)


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write a dataclass config as YAML (loadable again with :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def flat_params(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """A flat ``{name: value}`` view of a (nested) dataclass, for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in dataclasses.asdict(cfg).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update({f"{key}.{kk}": vv for kk, vv in v.items()})
        else:
            out[key] = v
    return out
