"""``mtdp store``: what an embedding store holds, and exporting from it."""
from __future__ import annotations

import argparse
import json


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="inspect or export an embedding store",
                       description="The embedding store of `jobs/embed.py`, `mtdp embed "
                                   "--store`, Serve and the benchmark.")
    ssub = p.add_subparsers(dest="store_cmd", required=True)
    info = ssub.add_parser("info", help="models (keys, row counts, search index) and runs")
    info.add_argument("store")
    info.set_defaults(func=_run_info)
    ex = ssub.add_parser("export", help="a run's embeddings as Parquet, .npy or HDF5",
                         description="Write the embeddings of one input run (`--run`, as "
                                     "named by the job or `mtdp embed --run`) with one model "
                                     "(`--model SPEC`, or `--key` from `mtdp store info`), "
                                     "in the run's order; HDF5: one dataset per protein, its "
                                     "id in attrs['original_id'], + X.mapping.csv.")
    ex.add_argument("store")
    ex.add_argument("--run", required=True, help="input run name (ids table)")
    group = ex.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help="model spec (its identity selects the table)")
    group.add_argument("--key", help="model key (see `mtdp store info`)")
    ex.add_argument("--too-long", choices=["truncate", "error", "window"], default="truncate",
                    help="the length policy the embeddings were computed with")
    ex.add_argument("--ids", default=None, help="only these ids (a file, one id a line)")
    ex.add_argument("-o", "--output", required=True, help=".parquet, .npy or .h5")
    ex.add_argument("--format", choices=["parquet", "npy", "h5"], default=None)
    ex.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                    help="value type of the file (float16 halves it)")
    ex.set_defaults(func=_run_export)
    im = ssub.add_parser("import", help="embeddings computed elsewhere, as a named model",
                         description="Store per-protein vectors made by another tool (Parquet, "
                                     ".npy + ids, HDF5 keyed by id or original_id) as the "
                                     "external model NAME, keyed by the sequences of --fasta; "
                                     "`mtdp search/annotate --model NAME --store STORE` then "
                                     "use them (stored queries only).")
    im.add_argument("store")
    im.add_argument("embeddings", help=".parquet, .npy (+ .ids.txt) or .h5")
    im.add_argument("--fasta", required=True, help="the proteins' sequences, by the same ids")
    im.add_argument("--name", required=True, help="the external model's name")
    im.add_argument("--run", required=True, help="run name for the ids (names search hits)")
    im.set_defaults(func=_run_import)


def model_table_of(store, key: str | None, model: str | None, too_long: str,
                   max_len: int | None = None):
    """The store table a command names: by ``--key`` (see `mtdp store info`), or by
    ``--model`` (its identity under the length policy and limit); never created."""
    if key:
        return store.model_by_key(key)
    from ..embed import model_table
    from ..models.registry import load_embedder

    return model_table(store, load_embedder(model, device="cpu"), too_long, max_len,
                       create=False)


def _run_info(args: argparse.Namespace) -> int:
    from ..search.index import index_state
    from ..store import EmbeddingStore

    store = EmbeddingStore(args.store, create=False)
    models = []
    for m in store.models():
        table = store.model(m["identity"], m["name"], create=False)
        models.append({"key": m["model_key"], "name": m["name"], "dim": m["dim"],
                       "rows": table.count(), "identity": m["identity"],
                       "proteins_per_s": round(table.throughput(), 2),
                       "index": index_state(table)})
    print(json.dumps({"store": store.uri, "models": models, "runs": store.runs()}, indent=2))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from ..store import EmbeddingStore
    from ..store.export import export_run

    store = EmbeddingStore(args.store, create=False)
    table = model_table_of(store, args.key, args.model, args.too_long)
    ids = None
    if args.ids:
        with open(args.ids) as fh:
            ids = [line.strip() for line in fh if line.strip()]
    n = export_run(store, table, args.run, args.output, args.format, ids, args.dtype)
    print(json.dumps({"output": args.output, "rows": n, "model": table.name,
                      "key": table.key}))
    return 0


def _run_import(args: argparse.Namespace) -> int:
    from ..store import EmbeddingStore
    from ..store.external import import_embeddings

    store = EmbeddingStore(args.store)
    counts = import_embeddings(store, args.embeddings, args.fasta, args.name, args.run)
    print(json.dumps({"store": store.uri, "model": args.name, "run": args.run, **counts}))
    return 0
