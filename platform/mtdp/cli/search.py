"""``mtdp index``, ``mtdp search``, ``mtdp annotate``: nearest neighbours over the embedding
store, and annotation transfer from annotated references."""
from __future__ import annotations

import argparse
import json
import sys

from ..config import bounded

EPILOG_SEARCH = """\
examples:
  mtdp embed uniref50.fasta.gz -o u50.parquet --model runs/student --store db --run uniref50
  mtdp index --store db --model runs/student            # IVF-HNSW-SQ, cosine (optional:
                                                         # exact search needs no index)
  mtdp search mine.fasta --store db --model runs/student -k 10 -o hits.tsv

Hits are stored proteins that have an id in the store's runs (--runs to choose); the output
has one row per hit: query, rank, hit_id, distance (cosine: 1 - cosine similarity;
euclidean: L2), other_ids (ids sharing the hit's sequence). Queries follow `mtdp embed`'s
rules (--skip-invalid lists bad records in OUTPUT.rejects.tsv); their embeddings are read
from the store when present and added to it otherwise.
"""


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--too-long", choices=["truncate", "error", "window"], default="truncate",
                   help="the length policy the store's embeddings were computed with")
    p.add_argument("--max-len", type=bounded(int, ge=1), default=None,
                   help="the length limit they were computed with (default: the model's)")


def _query_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("queries", help="query proteins (FASTA, plain or .gz)")
    p.add_argument("-m", "--model", required=True, help="model spec, as for `mtdp embed`")
    p.add_argument("-o", "--output", required=True, help="output TSV")
    p.add_argument("--metric", choices=["cosine", "euclidean"], default=None,
                   help="distance (default: the index's metric, else cosine)")
    p.add_argument("--batch-tokens", type=bounded(int, ge=1), default=None)
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: best found)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid queries (listed in OUTPUT.rejects.tsv) instead of "
                        "stopping")
    p.add_argument("--keep-first-duplicate", action="store_true",
                   help="on repeated query ids keep the first record instead of stopping")
    _model_args(p)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build a nearest-neighbour index on a store's model table",
                       description="Build (or rebuild) the approximate-nearest-neighbour "
                                   "index of one model's embeddings in the store.")
    p.add_argument("--store", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("-m", "--model", help="model spec (its identity selects the table)")
    group.add_argument("--key", help="model key (see `mtdp store info`)")
    p.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    p.add_argument("--kind", choices=["ivf_hnsw_sq", "ivf_pq"], default="ivf_hnsw_sq",
                   help="ivf_hnsw_sq (default): HNSW graphs over scalar-quantised vectors, "
                        "the most accurate per query; ivf_pq: product quantisation, several "
                        "times faster to build and smaller (see benchmarks/search_speed.py)")
    p.add_argument("--partitions", type=bounded(int, ge=1), default=None,
                   help="IVF partitions (default: about the square root of the rows)")
    p.add_argument("--sub-vectors", type=bounded(int, ge=1), default=None,
                   help="PQ sub-vectors, a divisor of the dimension (default: dim / 8)")
    _model_args(p)
    p.set_defaults(func=_run_index)

    s = sub.add_parser("search", help="the k nearest stored proteins of each query",
                       description="Find the stored proteins nearest to each query protein.",
                       epilog=EPILOG_SEARCH, formatter_class=argparse.RawDescriptionHelpFormatter)
    _query_args(s)
    s.add_argument("--store", required=True, help="embedding store (folder or s3://...)")
    s.add_argument("-k", type=bounded(int, ge=1), default=10, help="hits per query")
    s.add_argument("--runs", default=None, help="search only proteins of these runs "
                                                "(comma-separated; default: every run)")
    s.add_argument("--exact", action="store_true", help="brute force, ignoring any index")
    s.add_argument("--nprobes", type=bounded(int, ge=1), default=20,
                   help="IVF partitions probed per query (recall vs speed)")
    s.add_argument("--refine-factor", type=bounded(int, ge=1), default=10,
                   help="candidates re-ranked on full vectors: this × k")
    s.set_defaults(func=_run_search)

    a = sub.add_parser("annotate", help="transfer labels (GO terms, classes) from the nearest "
                                        "annotated references",
                       description="Annotate query proteins from their k nearest references "
                                   "in embedding space (goPredSim-style reliability scores).")
    _query_args(a)
    a.add_argument("--reference", required=True,
                   help="CSV/TSV of annotated proteins: id, sequence, labels")
    a.add_argument("--store", default=None, help="embedding store for references and queries "
                                                 "(recommended: references embed once)")
    a.add_argument("-k", type=bounded(int, ge=1), default=1,
                   help="neighbours per query (goPredSim's best for GO was 1)")
    a.add_argument("--kind", choices=["auto", "terms", "class"], default="auto",
                   help="labels are term lists (GO) or one class per protein")
    a.add_argument("--id-column", default=None)
    a.add_argument("--sequence-column", default=None)
    a.add_argument("--labels-column", default=None)
    a.add_argument("--max-distance", type=bounded(float, ge=0.0), default=None,
                   help="goPredSim's threshold mode: only neighbours within this distance "
                        "lend labels; queries with none get none")
    a.add_argument("--format", choices=["tsv", "cafa"], default="tsv",
                   help="tsv (query, label, score, support, nearest) or the CAFA "
                        "prediction format")
    a.add_argument("--go-terms", metavar="FILE", help="GO OBO (or term/namespace table): one "
                   "file per ontology, OUT_bpo/_mfo/_cco (+ _unknown), as goPredSim")
    a.set_defaults(func=_run_annotate)


def _run_index(args: argparse.Namespace) -> int:
    from ..search.index import build_index
    from ..store import EmbeddingStore
    from .store import model_table_of

    store = EmbeddingStore(args.store, create=False)
    info = build_index(model_table_of(store, args.key, args.model, args.too_long,
                                      args.max_len),
                       args.metric, args.kind, args.partitions, args.sub_vectors)
    print(json.dumps(info.to_dict()))
    return 0


def _queries(args: argparse.Namespace, extra_inputs: list[str]):
    from ..outputs import check_output
    from ..sequences import read_records

    check_output(args.output, "tsv", [args.queries, *extra_inputs])
    rejects: list = []
    records = read_records(args.queries, rejects=rejects,
                           on_invalid="skip" if args.skip_invalid else "error",
                           on_duplicate="keep-first" if args.keep_first_duplicate else "error")
    return records, rejects


def _finish(args, rejects, line: dict) -> int:
    from ..outputs import write_rejects

    write_rejects(args.output, rejects)
    line["rejected"] = len(rejects)
    print(json.dumps(line))
    if rejects:
        print(f"{len(rejects)} record(s) skipped, see {args.output}.rejects.tsv",
              file=sys.stderr)
    return 0


def _run_search(args: argparse.Namespace) -> int:
    from ..embed import CacheCounts, model_table
    from ..models.registry import load_embedder
    from ..search.query import search_plan, search_records, write_hits
    from ..store import EmbeddingStore

    from ..search.query import search_vectors
    from ..store.external import external_table, stored_vectors

    records, rejects = _queries(args, [])
    store = EmbeddingStore(args.store, create=False)
    external = external_table(store, args.model)
    if external is not None:  # an imported model: queries must be stored ones
        table, model = external, None
    else:
        model = load_embedder(args.model, device=args.device)
        table = model_table(store, model, args.too_long, args.max_len, create=False)
    metric, state, used = search_plan(table, args.metric, args.exact)
    if state and used == "exact":
        print(f"the index is built for {state['metric']} distances: searching {metric} "
              "exactly (slow on a large store; `mtdp index --metric "
              f"{metric}` to index it)", file=sys.stderr)
    counts = CacheCounts()
    runs = args.runs.split(",") if args.runs else None
    search = dict(metric=metric, exact=args.exact, state=state, nprobes=args.nprobes,
                  refine_factor=args.refine_factor)
    if model is None:
        vectors = stored_vectors(table, [r.id for r in records], [r.sequence for r in records])
        hits = search_vectors(store, table, [r.id for r in records], vectors, args.k, runs,
                              **search)
    else:
        hits = search_records(store, model, records, args.k, runs, too_long=args.too_long,
                              max_len=args.max_len, batch_tokens=args.batch_tokens,
                              counts=counts, table=table, **search)
    write_hits(args.output, hits)
    return _finish(args, rejects, {
        "output": args.output, "queries": len(records), "hits": len(hits), "metric": metric,
        "search": used, "computed": counts.new, "reused": counts.reused})


def _run_annotate(args: argparse.Namespace) -> int:
    from ..embed import CacheCounts
    from ..models.registry import load_embedder
    from ..search.annotate import annotate, read_reference, write_annotations
    from ..store import EmbeddingStore

    records, rejects = _queries(args, [args.reference])
    namespaces = _namespaces(args)
    ref = read_reference(args.reference, id_column=args.id_column,
                         sequence_column=args.sequence_column,
                         labels_column=args.labels_column, kind=args.kind,
                         skip_invalid=args.skip_invalid)
    from ..search.annotate import annotate_vectors
    from ..store.external import external_table, stored_vectors

    store = EmbeddingStore(args.store) if args.store else None
    counts = CacheCounts()
    metric = args.metric or "cosine"
    external = external_table(store, args.model) if store is not None else None
    if external is not None:  # an imported model: references and queries must be stored
        rows = annotate_vectors(
            ref, stored_vectors(external, ref.ids, ref.sequences), records,
            stored_vectors(external, [r.id for r in records], [r.sequence for r in records]),
            args.k, metric, args.max_distance)
        name = external.name
    else:
        model = load_embedder(args.model, device=args.device)
        rows = annotate(store, model, ref, records, args.k, metric, too_long=args.too_long,
                        max_len=args.max_len, batch_tokens=args.batch_tokens, counts=counts,
                        max_distance=args.max_distance)
        name = model.name
    files = _write_annotations(args, rows, name, namespaces)
    if ref.rejects:
        print(f"{len(ref.rejects)} reference row(s) skipped as invalid, e.g. {ref.rejects[0]}",
              file=sys.stderr)
    return _finish(args, rejects, {
        "output": files, "queries": len(records), "references": len(ref.ids),
        "kind": ref.kind, "labels": len(rows), "k": args.k, "metric": metric,
        "annotated_queries": len({r.query for r in rows}),
        "unlabelled_references": ref.unlabelled, "computed": counts.new,
        "reused": counts.reused})


def _namespaces(args: argparse.Namespace) -> dict[str, str] | None:
    """The GO term → ontology map of ``--go-terms`` (read before any embedding), or None."""
    from ..outputs import check_output
    from ..search.ontology import ONTOLOGY_FILES, ontology_path, read_namespaces

    if not args.go_terms:
        return None
    for ont in (*ONTOLOGY_FILES, "unknown"):
        check_output(ontology_path(args.output, ont), "tsv",
                     [args.queries, args.reference, args.go_terms])
    return read_namespaces(args.go_terms)


def _write_annotations(args: argparse.Namespace, rows, name: str,
                       spaces: dict[str, str] | None) -> str | dict[str, str]:
    """One output file, or with ``--go-terms`` one per ontology (every one written, so a
    pipeline finds all three; ``unknown`` only when some term is not in the file)."""
    from ..search.annotate import write_annotations
    from ..search.ontology import ONTOLOGY_FILES, ontology_path

    if spaces is None:
        write_annotations(args.output, rows, args.format, name)
        return args.output
    split: dict[str, list] = {ont: [] for ont in ONTOLOGY_FILES}
    for r in rows:
        split.setdefault(spaces.get(r.label, "unknown"), []).append(r)
    files = {}
    for ont, part in split.items():
        files[ont] = str(write_annotations(ontology_path(args.output, ont), part, args.format,
                                           name))
    if split.get("unknown"):
        print(f"{len(split['unknown'])} transferred label(s) of terms not in {args.go_terms} "
              f"written to {files['unknown']}", file=sys.stderr)
    return files
