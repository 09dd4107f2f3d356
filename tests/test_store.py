"""The embedding store and everything that embeds through it: the window policy against a
hand-computed example, idempotent and refusing writes, `mtdp embed --store` and export, and
the Ray Data embedding job (duplicates embedded once, reruns compute nothing, a killed job
resumes to exactly the uninterrupted result)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtdp.cli import main
from mtdp.models.base import Embedder
from mtdp.sequences import read_fasta, windows, write_fasta
from mtdp.store import EmbeddingStore, StoreError, seq_hash, store_identity

ROOT = Path(__file__).resolve().parents[1]


class Codes(Embedder):
    """A model whose output is known by hand: per residue ``[code, position in the window]``
    (code: A=1, B=2, ...); per protein the mean of those over the window."""

    name, dim, max_len, source = "codes", 2, 4, "codes"

    def to(self, device):
        return self

    def embed_batch(self, sequences, per_residue=False):
        res = [torch.tensor([[ord(c) - 64, p] for p, c in enumerate(s)], dtype=torch.float32)
               for s in sequences]
        emb = torch.stack([r.mean(0) for r in res])
        return emb, (res if per_residue else None)


def test_windows_are_overlapping_and_cover_the_sequence() -> None:
    assert windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert windows(9, 4, 1) == [(0, 4), (3, 7), (6, 9)]
    assert windows(4, 4) == [(0, 4)] and windows(12, 8) == [(0, 8), (6, 12)]
    with pytest.raises(ValueError, match="overlap"):
        windows(10, 4, 4)


def test_window_policy_matches_a_hand_computed_example() -> None:
    from mtdp.embed import embed_sequences

    model = Codes()
    # "ABCDEFGHI" (9 residues, codes 1..9), windows of 4 sharing 1: [0,4) [3,7) [6,9), of
    # lengths 4, 4, 3; window means of the codes 2.5, 5.5, 8 -> length-weighted
    # (4*2.5 + 4*5.5 + 3*8) / 11 = 56/11; of the positions 1.5, 1.5, 1 -> 15/11.
    emb, res = embed_sequences(model, ["ABCDEFGHI", "AB"], per_residue=True,
                               too_long="window", window_overlap=1)
    np.testing.assert_allclose(emb[0], [56 / 11, 15 / 11], rtol=1e-6)
    np.testing.assert_allclose(emb[1], [1.5, 0.5])  # short: one window, as without windows
    # Stitched per residue: residue 3 ('D') is position 3 of window 1 and 0 of window 2.
    assert res[0].shape == (9, 2)
    np.testing.assert_allclose(res[0][3], [4, 1.5])
    np.testing.assert_allclose(res[0][6], [7, 1.5])
    np.testing.assert_allclose(res[0][8], [9, 2])
    cut = embed_sequences(model, ["ABCDEFGHI"])  # truncate: 'ABCD' only
    np.testing.assert_allclose(cut[0], [2.5, 1.5])


def test_store_writes_are_idempotent_and_models_never_mix(tmp_path) -> None:
    store = EmbeddingStore(tmp_path / "s")
    a = store.model({"dim": 2, "m": "a"}, "a")
    b = store.model({"dim": 2, "m": "b"}, "b")
    h = [seq_hash(s) for s in ("MKV", "AAA", "MKV")]
    assert a.add(h[:2], [3, 3], np.ones((2, 2))) == 2
    assert a.add(h, [3, 3, 3], np.zeros((3, 2))) == 0  # stored once, first value kept
    assert a.count() == 2 and set(a.lookup(h)) == set(h)
    np.testing.assert_array_equal(a.lookup(h)[h[0]], [1, 1])
    assert b.lookup(h) == {}  # another model's table: never read for this one
    with pytest.raises(StoreError, match="shape"):
        a.add([seq_hash("Q")], [1], np.ones((1, 3)))
    with pytest.raises(StoreError, match="finite"):
        a.add([seq_hash("Q")], [1], np.full((1, 2), np.nan))
    assert len(EmbeddingStore(tmp_path / "s").models()) == 2  # reopened


def test_foreign_and_damaged_stores_are_refused(tmp_path) -> None:
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an mtdp embedding store"):
        EmbeddingStore(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(StoreError, match="is a file"):
        EmbeddingStore(foreign / "notes.txt")
    store = EmbeddingStore(tmp_path / "s")
    t = store.model({"dim": 4, "m": "x"}, "x")
    import pyarrow as pa

    store.db.create_table(t.table_name, data=pa.table({"seq_hash": ["a"], "wrong": [1]}),
                          mode="overwrite")  # someone replaced the table
    with pytest.raises(StoreError, match="damaged"):
        store.model({"dim": 4, "m": "x"}, "x")


@pytest.fixture(scope="module")
def small_fasta(real_fasta, tmp_path_factory) -> tuple[Path, int]:
    """60 real proteins plus 20 more ids repeating their sequences (25 % duplicates)."""
    recs = read_fasta(real_fasta)[:60]
    pairs = [(r.id, r.sequence) for r in recs] + [(f"copy{i}", recs[i].sequence)
                                                  for i in range(20)]
    p = tmp_path_factory.mktemp("st") / "in.fasta"
    write_fasta(pairs, p)
    return p, 60


def test_embed_with_store_computes_each_sequence_once(small_fasta, tmp_path, capsys) -> None:
    fasta, unique = small_fasta
    store = tmp_path / "store"
    args = ["embed", str(fasta), "--model", "tiny-random-esm2", "--device", "cpu", "--quiet",
            "--store", str(store), "--run", "r1"]
    assert main([*args, "-o", str(tmp_path / "a.parquet")]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (first["new"], first["reused"], first["proteins"]) == (unique, 20, 80)
    assert main([*args, "-o", str(tmp_path / "b.parquet")]) == 0
    again = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (again["new"], again["reused"]) == (0, 80)
    from mtdp.outputs import read_embeddings

    ids, a = read_embeddings(tmp_path / "a.parquet")
    _, b = read_embeddings(tmp_path / "b.parquet")
    np.testing.assert_array_equal(a, b)
    for fmt in ("npy", "h5", "parquet"):
        out = tmp_path / f"x.{fmt}"
        assert main(["store", "export", str(store), "--run", "r1", "--model",
                     "tiny-random-esm2", "-o", str(out)]) == 0
        if fmt == "h5":
            import h5py

            with h5py.File(out) as f:
                got = np.stack([f[i][()] for i in ids])
        else:
            got = read_embeddings(out)[1]
            assert read_embeddings(out)[0] == ids
        np.testing.assert_allclose(got, a, rtol=0, atol=0)
    assert main(["store", "export", str(store), "--run", "nope", "--model",
                 "tiny-random-esm2", "-o", str(tmp_path / "n.npy")]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["store", "export", str(store), "--run", "r1", "--model", "aac", "-o",
                 str(tmp_path / "n.npy")]) == 2
    assert "holds no embeddings of aac" in capsys.readouterr().err


def _store_rows(store: Path) -> dict[str, np.ndarray]:
    s = EmbeddingStore(store)
    (m,) = s.models()
    t = s.model(m["identity"], m["name"]).table.to_arrow()
    hashes = t.column("seq_hash").to_pylist()
    assert len(hashes) == len(set(hashes)), "a sequence stored twice"
    emb = t.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(hashes), -1)
    return dict(zip(hashes, emb))


@pytest.mark.slow
def test_embedding_job_dedupes_resumes_and_recomputes_nothing(ray_session, small_fasta,
                                                              tmp_path) -> None:
    from mtdp.embed_job import EmbedJobConfig, run_embed_job

    fasta, unique = small_fasta

    def cfg(store: Path, **kw) -> EmbedJobConfig:
        return EmbedJobConfig(inputs=[str(fasta)], model="tiny-random-esm2", store=str(store),
                              workdir=str(tmp_path / f"work-{store.name}"), run_name="job",
                              shard_size=20, commit_rows=16, track=False, progress=False,
                              **kw)

    ref = run_embed_job(cfg(tmp_path / "ref"))
    assert (ref.proteins, ref.unique, ref.computed, ref.reused) == (80, unique, unique, 0)
    assert ref.extra["merged_commits"] == 0  # alone on the store: every commit appended
    again = run_embed_job(cfg(tmp_path / "ref"))
    assert (again.computed, again.reused) == (0, unique)
    reference = _store_rows(tmp_path / "ref")
    assert len(reference) == unique
    ids, hashes = EmbeddingStore(tmp_path / "ref").read_ids("job")
    assert ids == [r.id for r in read_fasta(fasta)] and len(set(hashes)) == unique

    # kill -9 of the job's driver mid-run (after the writer's 1st commit), then the same
    # command again: every unique sequence once, none twice, vectors as without the kill.
    killed = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "jobs" / "embed.py"), "--inputs", str(fasta),
               "--model", "tiny-random-esm2", "--store", str(killed), "--workdir",
               str(tmp_path / "work-k"), "--run-name", "job", "--shard-size", "20",
               "--commit-rows", "16", "--track", "false", "--progress", "false"]
    # The job joins this session's cluster, as `ray job submit` does: no Ray start-up per
    # run, and the cluster kills what the dead driver owned (its actors, its writer).
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.run(command, env={**env, "MTDP_EMBED_FAULTS": json.dumps(
        {"kill_driver_after_batches": 1})}, capture_output=True, text=True, timeout=600,
        start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    partial = _store_rows(killed)
    assert 0 < len(partial) < unique, len(partial)
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert resumed["computed"] == unique - len(partial) and resumed["reused"] == len(partial)
    rows = _store_rows(killed)
    assert set(rows) == set(reference)
    for h, v in rows.items():
        np.testing.assert_allclose(v, reference[h], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_embedding_job_rejects_a_failing_protein_and_keeps_the_rest(
        ray_session, small_fasta, tmp_path, monkeypatch) -> None:
    """A sequence whose embedding fails is retried alone, then rejected under every id that
    carries it (rejects.tsv, not in the ids table); the proteins batched with it are stored."""
    from mtdp.embed_job import EmbedJobConfig, run_embed_job
    from mtdp.sequences import prepare

    fasta, unique = small_fasta
    first = read_fasta(fasta)[0]
    bad = prepare(first.sequence)
    monkeypatch.setenv("MTDP_EMBED_FAULTS", json.dumps({"unembeddable_sequences": [bad]}))
    work = tmp_path / "work"
    res = run_embed_job(EmbedJobConfig(
        inputs=[str(fasta)], model="tiny-random-esm2", store=str(tmp_path / "s"),
        workdir=str(work), run_name="job", shard_size=20, track=False, progress=False))
    assert (res.computed, res.rejected) == (unique - 1, 2)  # its own id and copy0
    rows = [line.split("\t") for line in (work / "rejects.tsv").read_text().splitlines()[1:]]
    assert sorted(r[0] for r in rows) == sorted([first.id, "copy0"])
    assert all(r[3] == "embed" and "injected embedding failure" in r[4] for r in rows)
    ids, hashes = EmbeddingStore(tmp_path / "s").read_ids("job")
    assert len(ids) == 78 and seq_hash(bad) not in hashes
    assert set(_store_rows(tmp_path / "s")) == set(hashes)
    # --too-long error: every protein over the limit listed, nothing embedded.
    from mtdp.sequences import SequenceError

    with pytest.raises(SequenceError, match=r"protein\(s\) longer than the model's limit of "
                                            r"50 residues \(--too-long error\)"):
        run_embed_job(EmbedJobConfig(
            inputs=[str(fasta)], model="tiny-random-esm2", store=str(tmp_path / "s"),
            workdir=str(work), run_name="job", shard_size=20, track=False, progress=False,
            too_long="error", max_len=50))
    listed = (work / "input-problems.tsv").read_text().splitlines()[1:]
    assert len(listed) == sum(len(prepare(r.sequence)) > 50 for r in read_fasta(fasta)) > 0
    assert all("residues > the limit of 50" in line for line in listed)
    assert len(EmbeddingStore(tmp_path / "s").models()) == 1  # no table for the refused run


@pytest.mark.slow
def test_a_failed_pass_releases_its_actors_and_past_the_restart_limit_stops_resumably(
        ray_session, small_fasta, tmp_path, monkeypatch, cpus_back) -> None:
    """A pass that fails (here its writer raises after one commit) releases its actors while
    its error is still referenced (they would starve the next pass's tasks); an embedding
    actor whose process dies (OOM kill, lost node) starts the pass again (the precompute kill
    test), and past the limit the job stops naming the death; the same command resumes."""
    from mtdp.embed_job import EmbedJobConfig, run_embed_job
    from mtdp.pipeline import passes

    fasta, unique = small_fasta
    cfg = EmbedJobConfig(inputs=[str(fasta)], model="tiny-random-esm2",
                         store=str(tmp_path / "s"), workdir=str(tmp_path / "w"),
                         run_name="job", shard_size=20, commit_rows=16, track=False,
                         progress=False)
    monkeypatch.setenv("MTDP_EMBED_FAULTS", json.dumps({"fail_after_batches": 1}))
    with pytest.raises(Exception, match="injected failure after 1 committed batch") as failed:
        run_embed_job(cfg)
    assert cpus_back(), f"the failed pass still holds CPUs while {failed.typename} is kept"
    marker = tmp_path / "crashed"
    monkeypatch.setenv("MTDP_EMBED_FAULTS", json.dumps({"crash_actor_once": str(marker)}))
    monkeypatch.setattr(passes, "RESTARTS", 0)
    with pytest.raises(RuntimeError, match=r"an actor of the pass died 1 times; last: .*"
                                           r"rerun the same command to resume") as failed:
        run_embed_job(cfg)
    assert marker.exists()
    assert cpus_back(), f"the failed pass still holds CPUs while {failed.typename} is kept"
    monkeypatch.delenv("MTDP_EMBED_FAULTS")
    res = run_embed_job(cfg)
    assert 0 < res.reused < unique and res.computed + res.reused == unique
    assert len(_store_rows(tmp_path / "s")) == unique


def test_the_lookup_reads_its_staged_shards_itself_sequences_only(tmp_path) -> None:
    """The pass's first task gets shard files, not rows (a bounded task at any input size):
    each file's sequences in order, keyed and sharded by their hash; other columns unread."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtdp.pipeline.stages import hashed

    seqs = [["MKV", "MKVL", "MKV"], ["ACDE"], []]
    files = []
    for i, chunk in enumerate(seqs):
        files.append(str(tmp_path / f"shard-{i}.parquet"))
        pq.write_table(pa.table({"id": [f"p{i}{k}" for k in range(len(chunk))],
                                 "sequence": pa.array(chunk, pa.string()),
                                 "length": pa.array([len(q) for q in chunk], pa.int32())}),
                       files[-1])
    out = hashed(pa.table({"file": files}), hash_shards=3)
    flat = [q for chunk in seqs for q in chunk]
    assert out.column_names == ["sequence", "seq_hash", "hash_shard"]
    assert out["sequence"].to_pylist() == flat
    assert out["seq_hash"].to_pylist() == [seq_hash(q) for q in flat]
    assert out["hash_shard"].to_pylist() == [int(seq_hash(q)[:8], 16) % 3 for q in flat]
    assert hashed(pa.table({"file": files[2:]}), hash_shards=3).num_rows == 0


def test_the_shuffles_grow_with_the_input_and_cap_their_objects() -> None:
    """Both shuffles (staging's by shard, the lookup's by hash shard) cut the rows into
    partitions of ~64 k rows, 64 to 512 of them, never more than the groups; their map tasks
    are capped at 512: at most 262 k shuffle objects at any input size."""
    from mtdp.pipeline.context import shuffle_maps, shuffle_partitions

    assert shuffle_partitions(245, 1_000_000) == 64  # 1 M proteins: as before the rule
    assert shuffle_partitions(12, 1_000_000) == 12  # one group each
    assert shuffle_partitions(2_442, 10_000_000) == 153  # ~65 k rows each
    assert shuffle_partitions(14_649, 60_000_000) == 512  # capped: ~117 k rows each
    assert shuffle_partitions(0, 0) == 1
    assert (shuffle_maps(31), shuffle_maps(1_700), shuffle_maps(0)) == (31, 512, 1)


@pytest.mark.slow
def test_a_job_past_the_shuffle_caps_gives_the_same_store(ray_session, real_fasta, tmp_path,
                                                          monkeypatch) -> None:
    """Past the caps (forced to 2 map tasks and 2 partitions here, as 60 M proteins would
    be), a map task parses several input pieces and hashes several staged shards, a reduce
    task holds several groups: the same counts, rejects, ids and vectors as under them."""
    import ray.data

    import mtdp.embed_job.run as job_run
    import mtdp.pipeline.context as context
    from mtdp.embed_job import EmbedJobConfig, run_embed_job

    recs = read_fasta(real_fasta)[:300]
    pairs = [(r.id, r.sequence) for r in recs] + [(f"copy{i}", recs[i].sequence)
                                                  for i in range(90)] + [(recs[5].id, "MKV")]
    fasta = tmp_path / "in.fasta"
    write_fasta(pairs, fasta)
    blocks, partitions = [], []
    from_items, groupby = ray.data.from_items, ray.data.Dataset.groupby
    monkeypatch.setattr(ray.data, "from_items", lambda items, **kw: (
        blocks.append(kw.get("override_num_blocks")), from_items(items, **kw))[1])
    monkeypatch.setattr(ray.data.Dataset, "groupby", lambda ds, key, **kw: (
        partitions.append(kw.get("num_partitions")), groupby(ds, key, **kw))[1])

    def job(name: str):
        blocks.clear()
        partitions.clear()
        out = run_embed_job(EmbedJobConfig(
            inputs=[str(fasta)], model="tiny-random-esm2", store=str(tmp_path / name),
            workdir=str(tmp_path / f"work-{name}"), run_name="job", shard_size=20,
            on_duplicate="keep-first", range_mb=0.0625, track=False, progress=False))
        return out, list(blocks), list(partitions)

    ref, ref_blocks, ref_partitions = job("ref")
    assert ref_blocks[0] > 2 and ref_blocks[-1] > 2 and min(ref_partitions) > 2
    for name, value in (("MAX_SHUFFLE_MAPS", 2), ("MAX_PARTITIONS", 2), ("MIN_PARTITIONS", 2)):
        monkeypatch.setattr(context, name, value)
    monkeypatch.setattr(job_run, "IDS_COMMIT_ROWS", 100)  # and the ids in several commits
    capped, capped_blocks, capped_partitions = job("capped")
    assert (capped_blocks[0], capped_blocks[-1], capped_partitions) == (2, 2, [2, 2])
    counts = ("proteins", "unique", "computed", "reused", "rejected")
    assert [getattr(capped, k) for k in counts] == [getattr(ref, k) for k in counts] \
        == [390, 300, 300, 0, 1]
    assert EmbeddingStore(tmp_path / "capped").read_ids("job") == \
        EmbeddingStore(tmp_path / "ref").read_ids("job")
    # The ids table: one commit (a fragment) per 2^18 rows, not one per staged shard (20).
    fragments = {name: len(EmbeddingStore(tmp_path / name).db.open_table("ids_job").to_lance()
                           .get_fragments()) for name in ("ref", "capped")}
    assert fragments["ref"] == 1 and 3 <= fragments["capped"] <= 4, fragments
    reference, rows = _store_rows(tmp_path / "ref"), _store_rows(tmp_path / "capped")
    assert set(rows) == set(reference)
    for h, v in rows.items():
        np.testing.assert_allclose(v, reference[h], rtol=0, atol=1e-6)


def test_store_identity_follows_the_weights_not_the_name(tmp_path) -> None:
    from mtdp.models.registry import load_embedder
    from mtdp.models.student import StudentConfig, StudentModel

    torch.manual_seed(0)
    m = StudentModel(StudentConfig.preset("tiny"))
    m.save(tmp_path / "one")
    m.save(tmp_path / "two")
    a = load_embedder(str(tmp_path / "one"), device="cpu")
    b = load_embedder(str(tmp_path / "two"), device="cpu")
    assert store_identity(a) == store_identity(b)  # same weights, other folder
    assert store_identity(a, "window") != store_identity(a)  # the policy is part of it
    torch.manual_seed(1)
    StudentModel(StudentConfig.preset("tiny")).save(tmp_path / "three")
    c = load_embedder(str(tmp_path / "three"), device="cpu")
    assert store_identity(c) != store_identity(a)


def test_store_writer_benchmark_counts_each_offered_row_once(capsys) -> None:
    """benchmarks/store_writer.py's fill goes through the writer's commit paths: with merges,
    rows offered again (every 2nd commit re-offers 10 of the one before) are not inserted
    twice; appending, every commit appends and each row is stored once; an unknown setting is
    refused by name."""
    from mtdp_bench.store_writer_perf import StoreWriterConfig, run_store_writer

    cfg = StoreWriterConfig(rows=3000, commit_rows=500, dim=8, repeat_every=2)
    out = run_store_writer(cfg)
    for setting in ("merge", "merge+index"):
        assert out[setting][-1]["rows"] == 3000
        assert out[setting][-1]["inserted"] == out[setting][-1]["stored"] == 3000 - 3 * 10
    last = out["append"][-1]
    assert (last["inserted"], last["stored"], last["merged"]) == (3000, 3000, 0)
    assert "merge+index: 3,000 rows" in capsys.readouterr().out
    with pytest.raises(ValueError, match="settings: unknown fast"):
        run_store_writer(StoreWriterConfig(rows=10, settings=["fast"]))
