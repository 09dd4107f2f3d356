"""Dataclass configs: defaults < YAML < CLI flags, typos rejected."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from mtdp.config import add_dataclass_arguments, dump_config, flat_params, load_config


@dataclass
class Demo:
    lr: float = 3e-4
    epochs: int = 1
    name: str = "x"
    bf16: bool = False
    limit: int | None = None
    teachers: list[str] = field(default_factory=lambda: ["a"], metadata={"help": "teachers"})


def _parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    add_dataclass_arguments(p, Demo)
    return p.parse_args(argv)


def test_precedence_defaults_yaml_cli(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.1\nepochs: 5\nteachers: [t1, t2]\n")
    args = _parse(["--config", str(y), "--epochs", "7", "--bf16", "true", "--limit", "none"])
    cfg = load_config(Demo, args.config, args)
    assert (cfg.lr, cfg.epochs, cfg.bf16, cfg.limit, cfg.teachers, cfg.name) == \
        (0.1, 7, True, None, ["t1", "t2"], "x")
    cfg2 = load_config(Demo, None, _parse(["--teachers", "[u]", "--limit", "3"]))
    assert cfg2.teachers == ["u"] and cfg2.limit == 3 and cfg2.lr == 3e-4


def test_unknown_yaml_key_and_round_trip(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown field"):
        load_config(Demo, y)
    dump_config(Demo(epochs=3), tmp_path / "d.yaml")
    assert load_config(Demo, tmp_path / "d.yaml") == Demo(epochs=3)
    assert flat_params(Demo())["teachers"] == ["a"]
