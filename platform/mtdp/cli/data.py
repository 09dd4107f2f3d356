"""``mtdp data``: fetch input and benchmark data (resumable, checksum-verified downloads)."""
from __future__ import annotations

import argparse
import sys

from ..download import SWISSPROT_METALINK_URL, SWISSPROT_URL, DownloadError, fetch_swissprot


def add(sub: argparse._SubParsersAction) -> None:
    """``mtdp data swissprot``: download (or check a local copy of) UniProtKB/Swiss-Prot."""
    p = sub.add_parser("data", help="fetch input data sets (Swiss-Prot, benchmark tasks)")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    sp = dsub.add_parser(
        "swissprot", help="download UniProtKB/Swiss-Prot FASTA (resumable, verified)",
        description="Download uniprot_sprot.fasta.gz from UniProt (resumes a partial download, "
                    "checks size and MD5 from RELEASE.metalink), or check a local copy; prints "
                    "the path to pass to jobs/precompute_teachers.py --inputs.")
    sp.add_argument("-o", "--out-dir", default=".", help="folder to download into (default .)")
    sp.add_argument("--local", default=None,
                    help="use this existing FASTA (plain or .gz) instead of downloading")
    sp.add_argument("--url", default=SWISSPROT_URL, help="source URL (default: UniProt)")
    sp.add_argument("--metalink", default=SWISSPROT_METALINK_URL,
                    help="metalink with size/MD5 ('' to skip)")
    sp.add_argument("--md5", default=None, help="expected MD5 (overrides the metalink)")
    sp.add_argument("--sha256", default=None, help="expected SHA-256")
    sp.add_argument("--quiet", action="store_true", help="no progress messages")
    sp.set_defaults(func=_run_swissprot)
    fb = dsub.add_parser(
        "fetch", help="download the benchmark tasks' data (resumable, SHA-256-checked)",
        description="Download every benchmark task's files into the layout tune/benchmark.py "
                    "reads (DeepLoc 2.0 partitions, FLIP Meltome, eSOL, DeepSol, DeepFRI GO), "
                    "from public repositories at pinned commits, each checked against its "
                    "SHA-256; reruns resume and keep what verifies.")
    fb.add_argument("what", choices=["benchmarks"])
    fb.add_argument("-o", "--out-dir", default=None,
                    help="data folder to fill (default: $MTDP_CACHE/data, where the benchmark "
                         "looks when $MTDP_DATA_DIR is not set)")
    fb.add_argument("--local", default=None,
                    help="check this existing data folder instead of downloading")
    fb.add_argument("--tasks", default=None,
                    help="only these tasks (comma-separated: localization, membrane, meltome, "
                         "esol, deepsol, go_pdb)")
    fb.add_argument("--quiet", action="store_true", help="no progress messages")
    fb.set_defaults(func=_run_fetch)


def _run_swissprot(args: argparse.Namespace) -> int:
    try:
        path = fetch_swissprot(args.out_dir, local=args.local, url=args.url,
                               metalink_url=args.metalink or None, md5=args.md5,
                               sha256=args.sha256, progress=not args.quiet)
    except DownloadError as exc:
        print(f"mtdp data: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _run_fetch(args: argparse.Namespace) -> int:
    from ..evaluate.fetch import FILES, default_dir, fetch_benchmarks

    tasks = set(args.tasks.split(",")) if args.tasks else None
    known = {t for f in FILES for t in f.task.split(", ")}
    if tasks and tasks - known:
        raise ValueError(f"--tasks: unknown {sorted(tasks - known)} (known: {sorted(known)})")
    try:
        out = fetch_benchmarks(args.out_dir, local=args.local, tasks=tasks,
                               progress=not args.quiet)
    except DownloadError as exc:
        print(f"mtdp data: error: {exc}", file=sys.stderr)
        return 1
    hint = "" if args.local is None and out == default_dir() else \
        f" (point the benchmark at it: export MTDP_DATA_DIR={out})"
    print(f"{out}{hint}")
    return 0
