"""Teacher precompute on Ray Data: contract, equality with the embedding engine, kill/resume,
malformed input. Real sequences (DeepLoc 1.0 test set), the two tiny random teachers.

Proteins are truncated to 64 residues here to keep the suite fast on 2 shared CPU cores; the
code path is the one used with the default 1,000.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtdp.embed import embed_sequences
from mtdp.precompute import FAULTS_ENV, PrecomputeConfig, run_precompute
from mtdp.teacher_data import load_teacher_dataset, read_teacher_table, teacher_matrix
from mtdp.sequences import SequenceError, prepare, read_fasta, write_fasta
from mtdp.teacher_data import Manifest, ManifestMismatch, data_files, split_of, teacher_column

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = ["tiny-random-esm2", "tiny-random-t5"]
MAX_LEN = 64
N_SEQ = 1000
SHARDS = 6


def _cfg(inputs, output, **kw) -> PrecomputeConfig:
    base = dict(inputs=[str(p) for p in inputs], teachers=TEACHERS, output=str(output),
                max_len=MAX_LEN, num_shards=SHARDS, batch_tokens=4096, progress=False,
                track=False)
    base.update(kw)
    return PrecomputeConfig(**base)


@pytest.fixture(scope="module")
def real_gz(real_fasta, tmp_path_factory) -> Path:
    """The first 1,000 real proteins as a gzipped FASTA."""
    path = tmp_path_factory.mktemp("pc_in") / "deeploc1000.fasta.gz"
    write_fasta(read_fasta(real_fasta)[:N_SEQ], path)
    return path


def _unique(path) -> int:
    """Distinct prepared sequences of an input (some DeepLoc proteins share a sequence)."""
    return len({prepare(r.sequence, max_len=MAX_LEN) for r in read_fasta(path)})


@pytest.fixture(scope="module")
def reference(ray_session, real_gz, tmp_path_factory):
    """One uninterrupted, MLflow-tracked run: (config, manifest)."""
    cfg = _cfg([real_gz], tmp_path_factory.mktemp("pc_ref") / "run", track=True)
    return cfg, run_precompute(cfg)


@pytest.mark.slow
def test_one_row_per_id_and_embeddings_match_the_teachers(reference, real_gz):
    from mtdp.models.teachers import load_teacher

    cfg, manifest = reference
    records = read_fasta(real_gz)
    expected = {r.id: prepare(r.sequence, max_len=MAX_LEN) for r in records}
    table = read_teacher_table(cfg.output)
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(expected) == manifest.rows
    assert set(ids) == set(expected)
    assert table["sequence"].to_pylist() == [expected[i] for i in ids]
    assert table["length"].to_pylist() == [len(expected[i]) for i in ids]
    assert table["split"].to_pylist() == [split_of(i, cfg.validation_fraction) for i in ids]
    for name in TEACHERS:
        col = table.schema.field(teacher_column(name)).type
        assert pa.types.is_fixed_size_list(col) and col.value_type == pa.float16()
        # Every other protein (half the reference cost): batches differ from the run's anyway.
        stored = teacher_matrix(table, manifest, name)[::2]
        ref = embed_sequences(load_teacher(name), [expected[i] for i in ids[::2]],
                              batch_tokens=4096)
        assert stored.shape == ref.shape
        # fp16 storage: relative error 2^-11, plus a little for different batch padding.
        np.testing.assert_allclose(stored, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


@pytest.mark.slow
def test_manifest_is_complete_and_tracked(reference):
    import mlflow

    from mtdp import __version__

    cfg, manifest = reference
    loaded = Manifest.load(cfg.output)
    assert loaded.rows == N_SEQ and loaded.max_len == MAX_LEN
    assert loaded.mtdp_version == __version__
    assert loaded.split_counts["train"] + loaded.split_counts["validation"] == N_SEQ
    assert loaded.split_counts["validation"] > 0
    assert loaded.inputs == [str(Path(cfg.inputs[0]).resolve())]
    table = read_teacher_table(cfg.output, split="train")
    assert table.num_rows == loaded.split_counts["train"]
    for name in TEACHERS:
        t = loaded.teacher(name)
        assert t.source == "random-init" and t.pretrained is False
        assert t.column == teacher_column(name) and len(t.mean) == len(t.std) == t.dim
        values = teacher_matrix(table, loaded, name).astype(np.float64)
        np.testing.assert_allclose(t.mean, values.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(t.std, values.std(0), rtol=1e-6, atol=1e-7)
    assert (Path(cfg.output) / "rejects.tsv").read_text().splitlines() == [
        "id\tsource\trecord\tstage\treason"]
    run = mlflow.get_run(manifest.extra["mlflow_run_id"])
    assert run.data.params["teachers"] == ",".join(TEACHERS)
    assert float(run.data.metrics["rows"]) == N_SEQ
    for name in TEACHERS:
        assert run.data.metrics[f"{name}.proteins_per_s"] > 0
        assert run.data.metrics[f"{name}.tokens_per_s"] > 0
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert "manifest.json" in arts and "rejects.tsv" in arts


@pytest.mark.slow
def test_readers_validate_the_manifest(reference, tmp_path):
    cfg, manifest = reference
    ds = load_teacher_dataset(cfg.output, teachers=["tiny-random-t5"], max_len=MAX_LEN)
    assert ds.count() == N_SEQ
    assert "t_tiny_random_esm2" not in ds.schema().names
    val = load_teacher_dataset(cfg.output, split="validation")
    assert val.count() == manifest.split_counts["validation"]
    with pytest.raises(ManifestMismatch, match="truncated to 64 residues but 1000"):
        read_teacher_table(cfg.output, max_len=1000)
    with pytest.raises(ManifestMismatch, match="teacher 'esm2_t6_8M_UR50D' is not in"):
        load_teacher_dataset(cfg.output, teachers=["esm2_t6_8M_UR50D"])
    with pytest.raises(FileNotFoundError, match="not a finished teacher dataset"):
        read_teacher_table(tmp_path)
    # Rerunning a finished run is a no-op returning the same manifest.
    mtimes = {f: Path(f).stat().st_mtime_ns for f in data_files(cfg.output)}
    again = run_precompute(_cfg(cfg.inputs, cfg.output))
    assert again.rows == manifest.rows
    assert mtimes == {f: Path(f).stat().st_mtime_ns for f in data_files(cfg.output)}


@pytest.mark.slow
def test_killed_run_resumes_to_an_identical_dataset(reference, real_gz, tmp_path, monkeypatch,
                                                    cpus_back):
    """Killed while embedding, then while assembling: each rerun computes only what is not
    committed yet, keeps every finished shard, and ends with the uninterrupted dataset. The
    failed pass's actors are released while its error is kept (else they starve the rerun's
    tasks: the rerun hung in CI)."""
    from mtdp.store import EmbeddingStore

    ref_cfg, _ = reference
    out = tmp_path / "run"
    # 1. The first teacher's store writer fails after 2 commits (of up to 128 proteins).
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"fail_after_batches": 2}))
    with pytest.raises(Exception, match="injected failure after 2 committed batch") as failed:
        run_precompute(_cfg([real_gz], out, commit_rows=128))
    assert cpus_back(), f"the failed pass still holds CPUs while {failed.typename} is kept"
    assert not data_files(out) and not (out / "manifest.json").exists()
    store = EmbeddingStore(out / "work" / "store", create=False)

    def stored() -> list[int]:
        return [store.model_by_key(m["model_key"]).count() for m in store.models()]

    assert len(stored()) == 1 and 0 < stored()[0] <= 256
    # 2. Resume: the first teacher call also kills its actor once (the pass must start again
    # and keep what was committed); assembly then fails after 2 finished shards.
    marker = tmp_path / "actor-crashed"
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"crash_actor_once": str(marker),
                                               "fail_after_shards": 2}))
    with pytest.raises(Exception, match="injected failure after 2 finished shard"):
        run_precompute(_cfg([real_gz], out, commit_rows=128))
    assert marker.exists()
    assert stored() == [_unique(real_gz)] * 2  # each distinct sequence once (10 repeat)
    finished = data_files(out)
    assert 2 <= len(finished) < SHARDS and not (out / "manifest.json").exists()
    mtimes = {f: Path(f).stat().st_mtime_ns for f in finished}
    # 3. Resume again: nothing is embedded, the other shards are assembled.
    monkeypatch.delenv(FAULTS_ENV)
    manifest = run_precompute(_cfg([real_gz], out, commit_rows=128))
    assert manifest.extra["this_run"]["rows_embedded"] == 0
    assert {f: Path(f).stat().st_mtime_ns for f in finished} == mtimes  # never rewritten
    assert manifest.rows == N_SEQ
    resumed, uninterrupted = read_teacher_table(out), read_teacher_table(ref_cfg.output)
    assert len(set(resumed["id"].to_pylist())) == resumed.num_rows == N_SEQ
    assert resumed.equals(uninterrupted)
    assert Manifest.load(out).teachers == Manifest.load(ref_cfg.output).teachers


@pytest.mark.slow
def test_a_shared_store_is_reused_by_another_run(reference, real_gz, tmp_path):
    """With --store, a second run over the same proteins embeds nothing: its dataset comes
    from the vectors the first committed."""
    ref_cfg, _ = reference
    shared = tmp_path / "shared-store"
    first = run_precompute(_cfg([real_gz], tmp_path / "a", store=str(shared),
                                teachers=TEACHERS[:1]))
    assert first.extra["this_run"]["rows_embedded"] == _unique(real_gz)
    second = run_precompute(_cfg([real_gz], tmp_path / "b", store=str(shared),
                                 teachers=TEACHERS[:1], num_shards=3))
    assert second.extra["this_run"]["rows_embedded"] == 0
    assert second.extra["this_run"]["rows_reused"] == _unique(real_gz)
    assert not (tmp_path / "b" / "work" / "store").exists()
    a, b = read_teacher_table(tmp_path / "a"), read_teacher_table(tmp_path / "b")
    col = teacher_column(TEACHERS[0])
    assert a.select(["id", "sequence", "split", col]).sort_by("id").equals(
        b.select(["id", "sequence", "split", col]).sort_by("id"))


@pytest.mark.slow
def test_damaged_shard_is_named_and_recomputed(reference, tmp_path, capsys):
    """A finished shard cut short (or replaced) after the run: readers refuse it by name, and
    a rerun names it, recomputes it, and ends with the dataset of an undamaged run."""
    ref_cfg, _ = reference
    out = tmp_path / "copy"
    shutil.copytree(ref_cfg.output, out)
    victim = Path(data_files(out)[1])
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ManifestMismatch, match=f"{victim.name} is damaged"):
        read_teacher_table(out)
    before = {f: Path(f).stat().st_mtime_ns for f in data_files(out) if f != str(victim)}
    manifest = run_precompute(_cfg(ref_cfg.inputs, out))
    assert f"damaged shard {victim}" in capsys.readouterr().err
    assert manifest.rows == N_SEQ
    assert {f: Path(f).stat().st_mtime_ns for f in before} == before  # the others untouched
    assert read_teacher_table(out).equals(read_teacher_table(ref_cfg.output))
    # A same-size replacement is caught by the checksum recorded at commit.
    other = Path(data_files(out)[0])
    raw = bytearray(other.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    other.write_bytes(bytes(raw))
    with pytest.raises(ManifestMismatch, match="SHA-256 differs"):
        read_teacher_table(out)


BAD_FASTA = """\
>good1 first copy
MKTAYIAKQRQISFVKSHFSRQ
>bad_letters
MKT1AYJ
>empty
>good2
ACDEFGHIKLMNPQRSTVWY
>good1 second copy
MKKKKKKKK
>lower
mktayiakqr
"""


def test_malformed_input_errors_then_rejects(ray_session, tmp_path, monkeypatch):
    bad = tmp_path / "bad.fasta"
    bad.write_text(BAD_FASTA)
    extra = tmp_path / "extra.parquet"
    pq.write_table(pa.table({"id": ["pq1", "pq2"], "sequence": ["MKV", "GGBZ"]}), extra)
    out = tmp_path / "run"
    from mtdp.io import sha256_file
    from mtdp.models.teachers import save_esm2_checkpoint, tiny_random_esm2

    # Input handling is teacher-independent: one teacher keeps it quick; a checkpoint path
    # (written here) also shows file teachers and their sha256 in the manifest.
    ckpt = save_esm2_checkpoint(tiny_random_esm2(seed=3), tmp_path / "esm2_tiny.pt")
    one = [str(ckpt)]
    with pytest.raises(SequenceError) as err:
        run_precompute(_cfg([bad, extra], out, num_shards=2, teachers=one))
    msg = str(err.value)
    assert "3 bad input record(s)" in msg and "2 invalid, 1 duplicate" in msg
    assert f"file {bad}, record 2, id 'bad_letters', position 4: invalid character '1'" in msg
    assert "--on-invalid skip" in msg and "--on-duplicate keep-first" in msg
    problems = (out / "input-problems.tsv").read_text()
    assert "empty sequence" in problems and "duplicate id (first seen in file" in problems
    assert not data_files(out)

    # Same directory, lenient policies: nothing had been embedded, so the run starts over.
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"unembeddable_sequences":
                                               ["ACDEFGHIKLMNPQRSTVWY"]}))  # good2
    manifest = run_precompute(_cfg([bad, extra], out, num_shards=2, on_invalid="skip",
                                   on_duplicate="keep-first", teachers=one))
    table = read_teacher_table(out)
    assert table["id"].to_pylist() == ["good1", "lower", "pq1", "pq2"]
    assert dict(zip(table["id"].to_pylist(), table["sequence"].to_pylist())) == {
        "good1": "MKTAYIAKQRQISFVKSHFSRQ", "lower": "MKTAYIAKQR", "pq1": "MKV", "pq2": "GGXX"}
    assert manifest.rows == 4 and manifest.extra["rejected"] == 4
    teacher = Manifest.load(out).teachers[0]
    assert (teacher.name, teacher.source) == ("esm2_tiny", str(ckpt))
    assert teacher.sha256 == sha256_file(ckpt) and teacher.column == "t_esm2_tiny"
    rejects = [line.split("\t") for line in (out / "rejects.tsv").read_text().splitlines()[1:]]
    by_id = {r[0]: (r[3], r[4]) for r in rejects}
    assert [r[1:3] for r in rejects if r[0] == "good2"] == [[str(bad), "4"]]
    assert set(by_id) == {"bad_letters", "empty", "good1", "good2"}
    assert by_id["bad_letters"][0] == "invalid"
    assert "invalid character '1'" in by_id["bad_letters"][1]
    assert by_id["empty"] == ("invalid", f"file {bad}, record 3, id 'empty': empty sequence")
    assert by_id["good1"][0] == "duplicate" and "record 5" in by_id["good1"][1]
    assert by_id["good2"][0] == "embed" and "injected embedding failure" in by_id["good2"][1]


@pytest.mark.slow
def test_truncated_gzip_and_changed_input_lose_nothing(reference, tmp_path, real_fasta):
    cfg, manifest = reference
    good = Path(cfg.inputs[0]).read_bytes()
    broken = tmp_path / "broken.fasta.gz"
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(SequenceError, match="corrupt or truncated gzip"):
        run_precompute(_cfg([broken], tmp_path / "fresh"))
    assert not data_files(tmp_path / "fresh")
    # A finished run given a different (here: truncated) input refuses and keeps its shards.
    files = data_files(cfg.output)
    before = {f: Path(f).stat().st_mtime_ns for f in files}
    with pytest.raises(ManifestMismatch, match="different arguments .*inputs.*kept"):
        run_precompute(_cfg([broken], cfg.output))
    assert {f: Path(f).stat().st_mtime_ns for f in data_files(cfg.output)} == before
    assert Manifest.load(cfg.output).rows == manifest.rows
    no_seq = tmp_path / "noseq.parquet"
    pq.write_table(pa.table({"id": ["a"], "seq": ["MKV"]}), no_seq)
    with pytest.raises(SequenceError, match="needs columns 'id' and 'sequence'"):
        run_precompute(_cfg([no_seq], tmp_path / "pq"))
    with pytest.raises(ValueError, match="unknown teacher 'nope'"):
        run_precompute(_cfg([real_fasta], tmp_path / "x", teachers=["nope"]))


def test_job_help_documents_every_flag():
    import dataclasses

    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "precompute_teachers.py"),
                          "--help"], capture_output=True, text=True, check=True).stdout
    for f in dataclasses.fields(PrecomputeConfig):
        assert "--" + f.name.replace("_", "-") in out
    assert "ray job submit" in out


def test_fasta_ranges_cover_every_record(real_fasta):
    """Byte ranges are cut at record starts and together hold every record exactly once."""
    from mtdp.inputs import InputFile, count_records, plan_inputs, read_range

    files = [InputFile(str(real_fasta), str(real_fasta), "fasta", 0)]
    ranges = plan_inputs(files, range_bytes=50_000)
    assert len(ranges) > 5
    first = 1
    got = []
    for r in ranges:
        r.first_record = first
        r.records = count_records(r)
        first += r.records
        got.extend((rec.id, rec.sequence, rec.index) for rec in read_range(r))
    want = [(rec.id, rec.sequence, rec.index) for rec in read_fasta(real_fasta)]
    assert got == want


def test_a_shard_is_assembled_from_the_store_with_every_reject_named(tmp_path):
    """Assembly: rows with every teacher's vector in the store become the shard (float16,
    in id order, statistics over the train rows); a failed embedding keeps its pass's reason,
    a vector that overflows float16 is refused by name."""
    from mtdp.precompute.rundir import RunDir
    from mtdp.precompute.shards import assemble_shards
    from mtdp.store import EmbeddingStore, seq_hash
    from mtdp.teacher_data import write_shard

    n, dim, col = 6, 4, teacher_column("t")
    seqs = [f"MKV{'A' * i}" for i in range(n)]
    stage = tmp_path / "stage.parquet"
    write_shard(pa.table({
        "id": [f"p{i}" for i in reversed(range(n))], "sequence": seqs[::-1],
        "length": [len(q) for q in seqs[::-1]], "split": ["train"] * n,
        "shard": pa.array([3] * n, pa.int32()), "source": ["in.fasta"] * n,
        "record": list(range(1, n + 1))}), stage)
    identity = {"class": "T", "dim": dim, "max_len": 64, "weights": "w"}
    table = EmbeddingStore(tmp_path / "store").model(identity, "t")
    emb = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    emb[4, 1] = 1e6  # finite in float32, not in float16
    table.add([seq_hash(q) for q in seqs[:5]], [len(q) for q in seqs[:5]], emb[:5])
    teachers = [{"name": "t", "column": col, "identity": identity}]
    out = assemble_shards(pa.table({"shard": [3], "path": [str(stage)]}),
                          run_root=str(tmp_path / "run"), store=str(tmp_path / "store"),
                          teachers=teachers, rejects={col: {seq_hash(seqs[5]): "t: boom"}},
                          fail_after=None)
    assert out.to_pylist()[0]["rows"] == 4 and out.to_pylist()[0]["rejected"] == 2
    run = RunDir(tmp_path / "run")
    written = pq.read_table(run.data_file(3))
    assert written["id"].to_pylist() == ["p0", "p1", "p2", "p3"]
    assert np.array_equal(np.stack(written[col].to_numpy(zero_copy_only=False)),
                          emb[:4].astype(np.float16))
    marker = json.loads(run.marker(3).read_text())
    reasons = {r["id"]: r["reason"] for r in marker["rejects"]}
    assert reasons["p5"] == "t: boom"
    assert reasons["p4"].startswith("t: non-finite embedding in float16 (max |x| 1e+06")
    assert np.allclose(marker["stats"][col]["mean"], emb[:4].astype(np.float64).mean(0))


def test_embed_actor_rejects_a_bad_protein_but_stops_on_a_broken_model():
    import torch

    from mtdp.pipeline.stages import EmbedActor

    threads = torch.get_num_threads()
    seqs = ["MKTAYIAKQR"[: 3 + i] for i in range(10)]
    batch = pa.table({"seq_hash": [f"h{i}" for i in range(10)], "sequence": seqs})
    try:
        actor = EmbedActor("tiny-random-t5", "truncate", None, None, 1, retries=1,
                           faults={"unembeddable_sequences": [seqs[4]]})
        out = actor(batch)
        reasons = out["reason"].to_pylist()
        assert reasons[4].startswith("tiny-random-t5: RuntimeError: injected embedding failure")
        assert "after 2 attempt(s)" in reasons[4]
        assert reasons[:4] + reasons[5:] == [None] * 9
        emb = np.stack(out["embedding"].to_numpy(zero_copy_only=False))
        ref = embed_sequences(actor.embedder, [s for i, s in enumerate(seqs) if i != 4])
        np.testing.assert_allclose(np.delete(emb, 4, axis=0), ref, rtol=1e-5, atol=1e-6)
        broken = EmbedActor("tiny-random-t5", "truncate", None, None, 1, retries=0,
                            faults={"unembeddable_sequences": seqs})
        with pytest.raises(RuntimeError, match="failed on all 10 proteins"):
            broken(batch)
    finally:
        torch.set_num_threads(threads)
