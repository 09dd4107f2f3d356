"""Dataclass configs loadable from YAML and command-line flags — one mechanism for every job.

Precedence: dataclass defaults < YAML file (``--config``) < flags given on the command line.
Each field becomes a ``--field-name`` flag; declare fields with :func:`option`, which holds the
help text and the field's allowed range or choices. Configs derive from :class:`Config`, whose
``__post_init__`` converts text (from flags, YAML or application arguments) to each field's
type, splits comma lists, and refuses a value out of range with a message naming the field —
however the config was built.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_NONE_TEXT = ("none", "null", "")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def option(default: Any = dataclasses.MISSING, *, help: str, factory: Any = None,
           ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, choices: tuple | None = None) -> Any:
    """A config field: its default (or ``factory`` for a list/dict), help text, and what
    values it accepts (``ge``/``gt``/``le``/``lt`` bounds for numbers, ``choices``)."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def bounded(tp: type, **limits: float):
    """An ``argparse`` type: text → ``tp``, refused (with the bound in the message) outside
    ``ge``/``gt``/``le``/``lt`` — for plain command-line options that are not config fields."""
    def convert(text: str):
        try:
            value = parse_value(tp, text)
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        for key, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            b = limits.get(key)
            if b is not None and not {"ge": value >= b, "gt": value > b, "le": value <= b,
                                      "lt": value < b}[key]:
                raise argparse.ArgumentTypeError(f"must be {word} {b:g}, got {text}")
        return value
    convert.__name__ = tp.__name__
    return convert


def flag(name: str) -> str:
    """The command-line flag of a field: ``batch_tokens`` → ``--batch-tokens``."""
    return "--" + name.replace("_", "-")


def _base(tp: Any) -> tuple[Any, bool]:
    """``(type, optional)`` of an annotation: ``int | None`` → ``(int, True)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), len(args) < len(typing.get_args(tp))
    return tp, False


def parse_value(tp: Any, value: Any) -> Any:
    """Convert ``value`` (text from a flag, YAML or an application argument) to type ``tp``.

    ``X | None`` accepts none/null/empty; bools accept true/false/yes/no/on/off/1/0; a
    ``list`` accepts a YAML list or a comma-separated string. Raises ValueError/TypeError.
    """
    base, optional = _base(tp)
    if value is None or (optional and isinstance(value, str)
                         and value.strip().lower() in _NONE_TEXT):
        if optional:
            return None
        raise ValueError("a value is required")
    origin = typing.get_origin(base) or base
    if origin is list:
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("[") else \
                [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        inner = (typing.get_args(base) or (str,))[0]
        return [parse_value(inner, v) for v in value]
    if origin is dict:
        value = yaml.safe_load(value) if isinstance(value, str) else value
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping, got {value!r}")
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        low = str(value).strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError(f"expected a whole number, got {value!r}")
        return int(value) if not isinstance(value, str) else int(value.strip())
    if base is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if base is str:
        if isinstance(value, (dict, list)):
            raise TypeError(f"expected text, got {value!r}")
        return str(value)
    return value


def check_field(name: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    """Raise ValueError naming ``name`` (and its flag) when ``value`` breaks its bounds."""
    if value is None:
        return
    where = f"{name} ({flag(name)})"
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value}")
        for key, ok, word in (("ge", lambda b: value >= b, ">="), ("gt", lambda b: value > b, ">"),
                              ("le", lambda b: value <= b, "<="), ("lt", lambda b: value < b, "<")):
            bound = meta.get(key)
            if bound is not None and not ok(bound):
                raise ValueError(f"{where} must be {word} {bound:g}, got {value:g}")


class Config:
    """Base of mtdp's config dataclasses: on construction every field is converted to its
    declared type and checked against its :func:`option` bounds (ValueError naming it)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            try:
                value = parse_value(hints[f.name], value)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{f.name} ({flag(f.name)}): {exc}") from None
            setattr(self, f.name, value)
            check_field(f.name, value, f.metadata)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` (default ``SUPPRESS``, so only flags the
    user actually gave override YAML/defaults); values are converted by :class:`Config`."""
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else None)
        meta = f.metadata
        limits = ", ".join(f"{w} {meta[k]:g}" for k, w in (("ge", ">="), ("gt", ">"),
                                                          ("le", "<="), ("lt", "<"))
                           if meta.get(k) is not None)
        extra = f"; one of {', '.join(map(str, meta['choices']))}" if meta.get("choices") else ""
        extra += f"; {limits}" if limits else ""
        parser.add_argument(flag(f.name), dest=f.name, default=argparse.SUPPRESS,
                            metavar=f.name.upper(),
                            help=f"{meta.get('help', '')} (default: "
                                 f"{json.dumps(default, default=str)}{extra})")


def load_config(cls: type[T], yaml_path: str | Path | None = None,
                args: argparse.Namespace | dict | None = None) -> T:
    """Build ``cls`` from defaults, then a YAML file, then parsed CLI ``args``.

    Raises:
        ValueError: a YAML key that is not a field of ``cls`` (typos must not pass silently),
            or a value of the wrong type or out of range (the message names the field and,
            for YAML, the file).
    """
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if yaml_path:
        try:
            data = yaml.safe_load(Path(yaml_path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{yaml_path}: cannot read the config ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{yaml_path}: expected a mapping of config fields")
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{yaml_path}: unknown field(s) {sorted(unknown)}; valid: "
                             f"{sorted(names)}")
        values.update(data)
    if args is not None:
        given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        values.update({k: v for k, v in given.items() if k in names})
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError("missing required setting(s): " + ", ".join(
            f"{m} ({flag(m)})" for m in missing))
    hints = typing.get_type_hints(cls)
    try:
        for key, value in values.items():
            try:
                values[key] = parse_value(hints[key], value)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{key} ({flag(key)}): {exc}") from None
        return cls(**values)
    except ValueError as exc:
        if yaml_path:
            raise ValueError(f"{exc} (settings from {yaml_path} and the command line)") from None
        raise


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write a dataclass config as YAML (loadable again with :func:`load_config`)."""
    from .io import write_text

    write_text(path, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


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


def config_from_cli(cls: type[T], doc: str, prog: str, argv: list[str] | None = None
                    ) -> T | None:
    """An entry script's ``cls`` from its flags (one per field, :func:`add_dataclass_arguments`;
    description and epilog from the script's docstring ``doc``), checked with its
    ``validate()`` where it has one. ``None`` after printing ``prog: error: ...`` for a value
    out of range or a bad combination (the script then exits 2)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc.split("\n\n", 1)[1] if "\n\n" in doc else None)
    add_dataclass_arguments(p, cls)
    args = p.parse_args(argv)
    try:
        cfg = load_config(cls, None, args)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None
    return cfg
