"""``mtdp embed``: embed the proteins of a FASTA file into Parquet or ``.npy``."""
from __future__ import annotations

import argparse
import json
import sys

from ..config import bounded
from ..pretrained import DEFAULT_MODEL
from ..sequences import check_input_file


EPILOG_EMBED = """\
examples:
  mtdp embed proteins.fasta -o proteins.parquet                       (the shipped student)
  mtdp embed proteins.fasta -o proteins.h5 --per-residue --dtype float16
  mtdp embed proteins.fasta -o x.h5 --include mean per_tok --toks_per_batch 4096   (esm-extract's flags)
  mtdp embed proteins.fasta -o proteins.parquet --model runs/student
  mtdp embed proteins.fasta.gz -o emb.npy --model esm2_t33_650M_UR50D
  mtdp embed proteins.fasta -o emb.parquet --model ~/models/esm2_t33_650M_UR50D.pt
  mtdp embed proteins.fasta -o emb.parquet --model models:/mtdp-student/1 --per-residue

The output has one row per input protein, in input order: Parquet columns id, length (after
truncation), embedding (a fixed-size list); a .npy matrix plus OUT.ids.txt; or HDF5 with one
dataset per protein (FASTA id in its original_id attribute, model_name at the root) and
OUT.mapping.csv, the layout ProtTrans and bio_embeddings write.
Sequences are checked (amino-acid letters only), upper-cased, U/Z/O/B mapped to X, and cut to
--max-len residues (default: the model's, 1,000 for the student).
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed", help="embed the proteins of a FASTA file with a student or teacher",
        description="Embed every protein of a FASTA file (plain or .gz) into one vector each.",
        epilog=EPILOG_EMBED, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="FASTA file (plain or gzip-compressed)")
    p.add_argument("-o", "--output", required=True,
                   help="output file: .parquet (recommended), .h5 (ProtTrans / bio_embeddings "
                        "layout, + .mapping.csv) or .npy (+ .ids.txt beside it)")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL,
                   help=f"default {DEFAULT_MODEL} (the shipped student); a shipped student's "
                        "name, student directory, MLflow URI (models:/NAME/VERSION), teacher name "
                        "(see `mtdp teachers`) or local teacher checkpoint (ESM-2 .pt / ProtT5 "
                        "directory)")
    p.add_argument("--format", choices=["parquet", "h5", "npy"], default=None,
                   help="output format (default: from the output file's extension)")
    p.add_argument("--per-residue", action="store_true",
                   help="also store one vector per residue (Parquet, or X.residues.h5 beside "
                        "an .h5 output; large)")
    p.add_argument("--include", nargs="+", choices=["mean", "per_tok"], default=None,
                   help="esm-extract's spelling: mean (the per-protein vector, always written) "
                        "and per_tok (= --per-residue)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="value type of the output file (float16 halves it; computed in fp32 "
                        "or the chosen --precision either way)")
    p.add_argument("--max-len", "--truncation_seq_length", type=bounded(int, ge=1), default=None,
                   help="truncate proteins to this many residues (default: the model's limit)")
    p.add_argument("--batch-tokens", "--toks_per_batch", type=bounded(int, ge=1), default=None,
                   help="padded tokens per batch (default 8192 on CPU, 65536 on GPU); lower it "
                        "if you run out of memory")
    p.add_argument("--too-long", choices=["truncate", "error", "window"], default="truncate",
                   help="sequences longer than the model's limit: cut to their first max-len "
                        "residues (default), refuse them, or embed overlapping windows and "
                        "average them (length-weighted)")
    _model_options(p)
    p.add_argument("--store", default=None,
                   help="embedding store (folder or s3://...): stored sequences are read, "
                        "only new ones computed, and stored")
    p.add_argument("--run", default=None,
                   help="with --store: save this input's ids under this run name (for "
                        "`mtdp store export --run`)")
    p.add_argument("--ray", action="store_true",
                   help="run as the Ray Data embedding job (jobs/embed.py) into --store, then "
                        "write OUTPUT from the store")
    p.add_argument("--actors", type=bounded(int, ge=1), default=1,
                   help="with --ray: model replicas (Ray actors)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: best found)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="arithmetic on CPU: auto (bf16 where the CPU has bf16 matrix units, "
                        "AMX / AVX-512-BF16; fp32 elsewhere), fp32 (exact) or bf16")
    p.add_argument("--keep-first-duplicate", action="store_true",
                   help="on repeated ids keep the first record instead of stopping")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid records (listed in OUTPUT.rejects.tsv) instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_embed)


def _model_options(p: argparse.ArgumentParser) -> None:
    """What the vector is made of: pooling and layer."""
    p.add_argument("--pooling", default=None,
                   choices=["masked", "mean", "reference", "max", "mean+max", "bos"],
                   help="students: masked (= mean over real residues) or reference (the "
                        "released MTDP model's: 1,001 tokens, pads in the mean); ESM-2 and "
                        "ProtT5 teachers: mean, max (per feature over residues), mean+max "
                        "(both, concatenated) or bos "
                        "(ESM-2's BOS token); default: the model's own")
    p.add_argument("--repr-layers", "--repr_layers", type=int, nargs="+", default=None,
                   metavar="LAYER",
                   help="ESM-2 / ProtT5 teachers: the layer whose states are pooled, as "
                        "esm-extract numbers them (0 = embeddings, -1 = last; default last); "
                        "several: their vectors concatenated in the order given (dim x n)")


def _run_embed(args: argparse.Namespace) -> int:
    from ..embed import embed_file
    from ..models.registry import load_embedder
    from ..outputs import check_output, output_format

    # Everything that can be checked without the model is checked before it loads.
    check_input_file(args.input)
    if args.include and "per_tok" in args.include:
        args.per_residue = True
    check_output(args.output, output_format(args.output, args.format), [args.input])
    if args.run and not args.store:
        raise ValueError("--run names the ids saved in a store: give --store too")
    if args.ray:
        return _run_ray(args)
    store = None
    if args.store:
        from ..store import EmbeddingStore

        store = EmbeddingStore(args.store)
    model = load_embedder(args.model, device=args.device, pooling=args.pooling,
                          precision=args.precision, repr_layer=args.repr_layers)
    summary = embed_file(
        model, args.input, args.output, fmt=args.format, batch_tokens=args.batch_tokens,
        per_residue=args.per_residue, max_len=args.max_len,
        on_duplicate="keep-first" if args.keep_first_duplicate else "error",
        on_invalid="skip" if args.skip_invalid else "error", progress=not args.quiet,
        too_long=args.too_long, store=store, run=args.run, dtype=args.dtype)
    d = summary.to_dict()
    rejected = d.pop("rejected")
    d["rejected"] = len(rejected)
    d["precision"], d["device"] = model.precision, str(model.device)  # what auto chose
    print(json.dumps(d))
    if summary.windowed:
        print(f"{summary.windowed:,} of {summary.proteins:,} protein(s) were longer than "
              f"{summary.max_len:,} residues and were embedded in overlapping windows",
              file=sys.stderr)
    if store is not None:
        print(f"store {args.store}: {summary.new:,} sequence(s) computed, {summary.reused:,} "
              "protein(s) answered from the store", file=sys.stderr)
    if summary.truncated:
        print(f"{summary.truncated:,} of {summary.proteins:,} protein(s) were longer than "
              f"{summary.max_len:,} residues and were cut to their first {summary.max_len:,} "
              "(the model's limit; --max-len to lower it)", file=sys.stderr)
    if rejected:
        print(f"{len(rejected)} record(s) skipped, see {args.output}.rejects.tsv",
              file=sys.stderr)
    return 0


def _run_ray(args: argparse.Namespace) -> int:
    """``--ray``: the embedding job into the store, then the output exported from it."""
    if not args.store:
        raise ValueError("--ray embeds into a store: give --store DIR")
    if args.per_residue:
        raise ValueError("--ray stores per-protein embeddings only; drop --per-residue")
    if args.repr_layers:
        raise ValueError("--repr-layers does not apply to --ray yet: embed without --ray")
    if args.pooling:
        raise ValueError("--pooling does not apply to --ray: make a student directory with "
                         "that pooling (`mtdp student import-mtdp --pooling ...`) and pass it")
    from ..embed_job import EmbedJobConfig, run_embed_job
    from ..store import EmbeddingStore
    from ..store.export import export_run

    cfg = EmbedJobConfig(
        inputs=[args.input], model=args.model, store=args.store, run_name=args.run or "",
        too_long=args.too_long, max_len=args.max_len, actors=args.actors,
        batch_tokens=args.batch_tokens, progress=not args.quiet, precision=args.precision,
        on_invalid="skip" if args.skip_invalid else "error",
        on_duplicate="keep-first" if args.keep_first_duplicate else "error").resolved()
    result = run_embed_job(cfg)
    store = EmbeddingStore(args.store, create=False)
    table = next(store.model(m["identity"], m["name"], create=False) for m in store.models()
                 if m["model_key"] == result.model_key)
    rows = export_run(store, table, cfg.run_name, args.output, args.format, dtype=args.dtype)
    print(json.dumps({"output": str(args.output), "proteins": rows, "computed": result.computed,
                      "reused": result.reused, "rejected": result.rejected,
                      "run": cfg.run_name}))
    return 0
