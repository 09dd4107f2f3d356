"""Phase 3 of a precompute: assemble each shard from its staged rows and the teachers'
vectors in the store (done-marker with its statistics, then the data file) and, when every
shard is finished, the rejects file and the manifest.

A shard is written once every teacher's pass is done — its marker first, then the Parquet
file (atomically). A finished shard is never rewritten. A protein without a finite float16
vector of every teacher becomes a reject with the reason. The manifest's per-feature train
mean/std are merged from the markers (Chan et al.'s parallel algorithm), so no pass over the
data is needed at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from ..io import write_json
from ..teacher_data import Manifest, TeacherEntry, data_files, write_shard
from .config import PrecomputeConfig
from ..pipeline.workdir import write_rejects_tsv
from .rundir import FAULTS_ENV, REJECTS_FILE, RunDir


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


def assemble_shards(batch, *, run_root: str, store: str, teachers: list[dict],
                    rejects: dict[str, dict[str, str]], fail_after: int | None):
    """Ray Data UDF: build every unfinished shard of ``batch`` (``{shard, path}`` items) from
    its staged rows and the teachers' vectors in ``store`` — marker, then data file.
    ``rejects`` holds each teacher column's failed sequences (hash → reason)."""
    import pyarrow as pa

    from ..store import EmbeddingStore

    run, db = RunDir(run_root), EmbeddingStore(store, create=False)
    results = []
    for item in batch.to_pylist():
        if run.finished(item["shard"]):
            continue
        results.append(_finish_shard(run, item["shard"], item["path"], db, teachers, rejects))
        if fail_after is not None and len(data_files(run.root)) >= fail_after:
            raise RuntimeError(f"injected failure after {fail_after} finished shard(s) "
                               f"({FAULTS_ENV})")
    return pa.Table.from_pylist(results, schema=pa.schema(
        [("shard", pa.int32()), ("rows", pa.int64()), ("rejected", pa.int64()),
         ("residues", pa.int64()), ("finished_at", pa.float64())]))


def _teacher_columns(db, t: dict, hashes: list[str], reasons: list, failed: dict) -> dict:
    """One teacher's float16 column (and per-residue column) for the shard's rows, from the
    store; rows it has no finite vector for get their reason in ``reasons``."""
    import pyarrow as pa

    from ..store import ResidueTable
    from ..store.residues import states_array

    table = db.model(t["identity"], t["name"], create=False)
    found = table.lookup(hashes)
    emb = np.zeros((len(hashes), table.dim), dtype=np.float16)
    for i, h in enumerate(hashes):
        v = found.get(h)
        if v is None:
            reasons[i] = reasons[i] or failed.get(h) or f"{t['name']}: not in the store"
            continue
        with np.errstate(over="ignore"):  # an overflow is refused just below, by name
            emb[i] = v.astype(np.float16)
        if reasons[i] is None and not np.isfinite(emb[i]).all():
            reasons[i] = (f"{t['name']}: non-finite embedding in float16 (max |x| "
                          f"{np.abs(v).max():.3g})")
    cols = {t["column"]: pa.FixedSizeListArray.from_arrays(
        pa.array(emb.reshape(-1), pa.float16()), table.dim)}
    if t.get("residue_column"):
        states = ResidueTable(table, int(t.get("residue_window", 1))).lookup(hashes)
        for i, h in enumerate(hashes):
            if h not in states:
                reasons[i] = reasons[i] or failed.get(h) or f"{t['name']}: no states stored"
        cols[t["residue_column"]] = states_array([states.get(h) for h in hashes], table.dim)
    return cols


def _finish_shard(run: RunDir, shard: int, path: str, db, teachers: list[dict],
                  rejects: dict[str, dict[str, str]]) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ..store.keys import seq_hash

    table = pq.read_table(path).sort_by([("id", "ascending")])  # deterministic content
    hashes = [seq_hash(q) for q in table["sequence"].to_pylist()]
    reasons: list[str | None] = [None] * table.num_rows
    for t in teachers:
        for name, col in _teacher_columns(db, t, hashes, reasons,
                                          rejects.get(t["column"], {})).items():
            table = table.append_column(name, col)
    ok_mask = pa.array([r is None for r in reasons])
    ok = table.filter(ok_mask)
    columns = [c for t in teachers for c in (t["column"], t.get("residue_column")) if c]
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
    bad = [{"id": r["id"], "source": r["source"], "record": r["record"], "stage": "embed",
            "reason": why} for r, why in zip(table.select(["id", "source", "record"])
                                             .to_pylist(), reasons) if why is not None]
    marker = {"shard": shard, "rows": data.num_rows,
              "residues": int(pc.sum(data["length"]).as_py() or 0),
              "splits": {s: int(pc.sum(pc.equal(data["split"], s)).as_py() or 0)
                         for s in ("train", "validation")},
              "rejects": bad, "stats": stats, "written": time.time()}

    def commit_marker(record: dict) -> None:
        # The marker, with the file's row count and checksum, is written first: a data file
        # present means its marker is, and a damaged file is recognised on resume.
        write_json(run.marker(shard), {**marker, "file": record})

    write_shard(data, run.data_file(shard), before_commit=commit_marker)
    return {"shard": shard, "rows": data.num_rows, "rejected": len(bad),
            "residues": marker["residues"], "finished_at": time.time()}


def finalize(cfg: PrecomputeConfig, run: RunDir, teachers: list[dict], stage: dict,
             passes: dict[str, dict]) -> Manifest:
    """The rejects file and the manifest (returned), once every shard is finished; ``passes``
    holds each teacher column's embedding record (actor seconds over every invocation)."""
    missing = [int(s) for s in stage["shards"] if not run.finished(int(s))]
    if missing:
        raise RuntimeError(f"{len(missing)} shard(s) still unfinished after assembly "
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
        if t.get("residue_column"):
            entry.residue_column = t["residue_column"]
            entry.residue_window = int(t.get("residue_window", 1))
            n, mean, m2 = _merge_stats([m["stats"][entry.residue_column] for m in markers])
            if n:
                entry.residue_mean = mean.tolist()
                entry.residue_std = np.sqrt(m2 / n).tolist()
        entries.append(entry)
        seconds[t["name"]] = float(passes.get(t["column"], {}).get("seconds", 0.0))
    rows = sum(m["rows"] for m in markers)
    splits = {s: sum(m["splits"][s] for m in markers) for s in ("train", "validation")}
    manifest = Manifest(
        teachers=entries, max_len=cfg.max_len, rows=rows,
        inputs=[os.path.abspath(p) for p in cfg.inputs],
        validation_fraction=cfg.validation_fraction, split_counts=splits,
        length_rule=cfg.length_rule,
        extra={"num_shards": stage["num_shards"], "shards": len(markers),
               "records_read": stage["records"], "rejected": len(rejects),
               "rejects_file": REJECTS_FILE, "invalid": stage["invalid"],
               "duplicates": stage["duplicates"], "residues": sum(m["residues"] for m in markers),
               "on_invalid": cfg.on_invalid, "on_duplicate": cfg.on_duplicate,
               "teacher_specs": list(cfg.teachers), "std": "population (ddof=0) over train rows",
               "teacher_info": {t["name"]: {k: v for k, v in t.items()
                                            if k not in ("column", "residue_column")}
                                for t in teachers},
               "teacher_seconds": {k: round(v, 3) for k, v in seconds.items()}})
    manifest.files = {run.data_file(int(s)).name: m["file"]
                      for s, m in zip(stage["shards"], markers) if m.get("file")}
    manifest.save(run.root)
    # Staged copies are no longer needed; markers and run state stay for auditing.
    shutil.rmtree(run.stage, ignore_errors=True)
    return manifest
