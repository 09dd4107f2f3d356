"""Phase 3 of a precompute: write each finished shard (done-marker with its statistics, then
the data file) and, when every shard is finished, the rejects file and the manifest.

A shard is written once all its teachers are done — its marker first, then the Parquet file
(atomically). A finished shard is never rewritten. The manifest's per-feature train mean/std
are merged from the markers (Chan et al.'s parallel algorithm), so no pass over the data is
needed at the end.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import numpy as np

from ..io import write_json
from ..teacher_data import (Manifest, TeacherEntry, data_files, residue_column, write_shard)
from .config import PrecomputeConfig
from .rundir import FAULTS_ENV, REJECTS_FILE, RunDir, write_rejects_tsv


def _feature_stats(values: np.ndarray) -> dict:
    """count / mean / M2 of ``values`` [N, dim] in float64 (mergeable across shards)."""
    v = values.astype(np.float64)
    n = len(v)
    mean = v.mean(axis=0) if n else np.zeros(v.shape[1])
    m2 = ((v - mean) ** 2).sum(axis=0) if n else np.zeros(v.shape[1])
    return {"n": n, "mean": mean.tolist(), "m2": m2.tolist()}


def _merge_stats(parts: list[dict]) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s parallel merge of per-shard (n, mean, M2)."""
    n, mean, m2 = 0, None, None
    for p in parts:
        nb = p["n"]
        if not nb:
            continue
        mb, m2b = np.asarray(p["mean"]), np.asarray(p["m2"])
        if mean is None:
            n, mean, m2 = nb, mb, m2b
            continue
        total = n + nb
        delta = mb - mean
        mean = mean + delta * nb / total
        m2 = m2 + m2b + delta ** 2 * n * nb / total
        n = total
    return n, mean, m2


def write_shards(batch, *, run_root: str, expected: dict, columns: list[str],
                  fail_after: int | None):
    """Ray Data UDF: write every complete shard in ``batch`` (marker, then data file).

    A shard normally arrives whole in one batch. If Ray Data ever splits one, the pieces are
    kept as part files until all rows are present, then merged.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    run = RunDir(run_root)
    results = []
    for shard in sorted(set(batch["shard"].to_pylist())):
        piece = batch.filter(pc.equal(batch["shard"], shard))
        want = expected[str(shard)]
        if run.finished(shard):
            continue
        if piece.num_rows != want:
            pdir = run.parts / run.shard_name(shard)
            key = hashlib.sha1("\n".join(sorted(piece["id"].to_pylist())).encode()).hexdigest()
            write_shard(piece, pdir / f"{key}.parquet")
            paths = sorted(pdir.glob("*.parquet"))
            pieces = [pq.read_table(p) for p in paths]
            if sum(t.num_rows for t in pieces) != want:
                continue
            piece = pa.concat_tables(pieces)
        results.append(_finish_shard(run, shard, piece, columns))
        shutil.rmtree(run.parts / run.shard_name(shard), ignore_errors=True)
        if fail_after is not None and len(data_files(run.root)) >= fail_after:
            raise RuntimeError(f"injected failure after {fail_after} finished shard(s) "
                               f"({FAULTS_ENV})")
    return pa.Table.from_pylist(results, schema=pa.schema(
        [("shard", pa.int32()), ("rows", pa.int64()), ("rejected", pa.int64()),
         ("residues", pa.int64()), ("finished_at", pa.float64())]))


def _finish_shard(run: RunDir, shard: int, table, columns: list[str]) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.sort_by([("id", "ascending")])  # deterministic content however it arrived
    reasons = table["_reject"]
    ok_mask = pc.is_null(reasons)
    ok = table.filter(ok_mask)
    bad = table.filter(pc.invert(ok_mask))
    seconds = {c: float(pc.sum(table[f"_sec{c}"]).as_py() or 0.0) for c in columns
               if f"_sec{c}" in table.column_names}
    data = ok.select(["id", "sequence", "length", "split", *columns])
    train = data.filter(pc.equal(data["split"], "train"))
    stats = {}
    for c in columns:
        typ = data.schema.field(c).type
        values = train[c].combine_chunks().flatten()
        if pa.types.is_list(typ):  # per-residue column: statistics over residues
            typ, values = typ.value_type, values.flatten()
        values = values.to_numpy(zero_copy_only=False)
        stats[c] = _feature_stats(values.reshape(-1, typ.list_size))
    marker = {"shard": shard, "rows": data.num_rows,
              "residues": int(pc.sum(data["length"]).as_py() or 0),
              "splits": {s: int(pc.sum(pc.equal(data["split"], s)).as_py() or 0)
                         for s in ("train", "validation")},
              "rejects": [{"id": r["id"], "source": r["source"], "record": r["record"],
                           "stage": "embed", "reason": r["_reject"]}
                          for r in bad.select(["id", "source", "record", "_reject"]).to_pylist()],
              "seconds": seconds, "stats": stats, "written": time.time()}

    def commit_marker(record: dict) -> None:
        # The marker, with the file's row count and checksum, is written first: a data file
        # present means its marker is, and a damaged file is recognised on resume.
        write_json(run.marker(shard), {**marker, "file": record})

    write_shard(data, run.data_file(shard), before_commit=commit_marker)
    return {"shard": shard, "rows": data.num_rows, "rejected": bad.num_rows,
            "residues": marker["residues"], "finished_at": time.time()}


def finalize(cfg: PrecomputeConfig, run: RunDir, teachers: list[dict], stage: dict,
              state: dict) -> tuple[Manifest, dict]:
    missing = [int(s) for s in stage["shards"] if not run.finished(int(s))]
    if missing:
        raise RuntimeError(f"{len(missing)} shard(s) still unfinished after the embedding pass "
                           f"(e.g. {missing[:5]}); rerun with the same arguments to resume")
    markers = [json.loads(run.marker(int(s)).read_text()) for s in stage["shards"]]
    rejects = list(stage["rejects"]) + [r for m in markers for r in m["rejects"]]
    write_rejects_tsv(run.root / REJECTS_FILE, rejects)
    entries = []
    seconds: dict[str, float] = {}
    for t in teachers:
        n, mean, m2 = _merge_stats([m["stats"][t["column"]] for m in markers])
        std = np.sqrt(m2 / n) if n else None
        entry = TeacherEntry(
            name=t["name"], dim=t["dim"], source=t["source"], column=t["column"],
            pretrained=bool(t.get("pretrained")), sha256=t.get("sha256"),
            mean=[] if mean is None else mean.tolist(), std=[] if std is None else std.tolist())
        if t["spec"] in cfg.per_residue:
            entry.residue_column = residue_column(t["name"])
            n, mean, m2 = _merge_stats([m["stats"][entry.residue_column] for m in markers])
            if n:
                entry.residue_mean = mean.tolist()
                entry.residue_std = np.sqrt(m2 / n).tolist()
        entries.append(entry)
        seconds[t["name"]] = sum(m["seconds"].get(t["column"], 0.0) for m in markers)
    rows = sum(m["rows"] for m in markers)
    splits = {s: sum(m["splits"][s] for m in markers) for s in ("train", "validation")}
    manifest = Manifest(
        teachers=entries, max_len=cfg.max_len, rows=rows,
        inputs=[os.path.abspath(p) for p in cfg.inputs],
        validation_fraction=cfg.validation_fraction, split_counts=splits,
        extra={"num_shards": stage["num_shards"], "shards": len(markers),
               "records_read": stage["records"], "rejected": len(rejects),
               "rejects_file": REJECTS_FILE, "invalid": stage["invalid"],
               "duplicates": stage["duplicates"], "residues": sum(m["residues"] for m in markers),
               "on_invalid": cfg.on_invalid, "on_duplicate": cfg.on_duplicate,
               "teacher_specs": list(cfg.teachers), "std": "population (ddof=0) over train rows",
               "teacher_info": {t["name"]: {k: v for k, v in t.items() if k != "column"}
                                for t in teachers},
               "teacher_seconds": {k: round(v, 3) for k, v in seconds.items()}})
    manifest.files = {run.data_file(int(s)).name: m["file"]
                      for s, m in zip(stage["shards"], markers) if m.get("file")}
    manifest.save(run.root)
    # Staged copies are no longer needed; markers and run state stay for auditing.
    shutil.rmtree(run.stage, ignore_errors=True)
    shutil.rmtree(run.parts, ignore_errors=True)
    return manifest, seconds
