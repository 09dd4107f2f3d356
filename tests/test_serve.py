"""The Ray Serve embedding service over real HTTP on 127.0.0.1 (tiny random student).

One Serve application is started in-process for the module (on a free, non-default port) and
talked to with httpx; embeddings are compared with the Embedder and with ``mtdp embed``.
"""
from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from mtdp.embed import embed_sequences

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `serve run` puts the repo root on sys.path; do the same here
    sys.path.insert(0, str(ROOT))

pytestmark = pytest.mark.timeout(180)

MAX_LEN = 200          # the tiny student's max length: real DeepLoc proteins exceed it
MAX_SEQUENCES = 20     # per-request limit configured for the test service
MAX_BODY = 200_000
MAX_PER_RESIDUE_VALUES = 128 * 1000   # per-residue answers up to 1,000 residues (dim 128)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random student (real class, saved the real way)."""
    import torch

    from mtdp.models.student import StudentConfig, StudentModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("serve") / "tiny-student"
    StudentModel(StudentConfig.preset("tiny", max_len=MAX_LEN)).save(d)
    return d


@pytest.fixture(scope="module")
def real_pairs(real_fasta: Path) -> list[tuple[str, str]]:
    from mtdp.sequences import read_fasta

    return [(r.id, r.sequence) for r in read_fasta(real_fasta)[:400]]


@pytest.fixture(scope="module")
def serve_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-store") / "store"


@pytest.fixture(scope="module")
def service(ray_session, student_dir: Path, serve_store: Path):
    """Base URL of the running service (with an embedding store); Serve is shut down
    afterwards."""
    import httpx
    from ray import serve

    from serve.app import mtdp

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        # Arguments as strings, exactly as `serve run serve.app:mtdp KEY=VALUE` passes them.
        app = mtdp({"model": str(student_dir), "max_sequences": str(MAX_SEQUENCES),
                    "device": "cpu", "batch_wait_timeout_s": "0.02",
                    "max_per_residue_values": str(MAX_PER_RESIDUE_VALUES),
                    "max_body_bytes": str(MAX_BODY),
                    "store": str(serve_store)})
        serve.run(app, name="mtdp", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def embedder(student_dir: Path):
    from mtdp.models.registry import load_embedder

    return load_embedder(str(student_dir), device="cpu")


def _prepared(pairs: list[tuple[str, str]]) -> list[str]:
    from mtdp.sequences import prepare

    return [prepare(s, max_len=MAX_LEN) for _, s in pairs]


def test_health_info_and_docs(service, student_dir: Path) -> None:
    r = service.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    info = service.get("/info").json()
    assert info["model"] == student_dir.name
    assert info["dim"] == 128 and info["max_len"] == MAX_LEN and info["device"] == "cpu"
    assert info["max_sequences"] == MAX_SEQUENCES and len(info["model_version"]) == 12
    paths = service.get("/openapi.json").json()["paths"]
    assert {"/embed", "/embed/fasta", "/healthz", "/info"} <= set(paths)
    assert service.get("/docs").status_code == 200


def test_embed_json_equals_embedder(service, embedder, real_pairs) -> None:
    from mtdp.serving import decode_npy

    pairs = real_pairs[:12]
    body = {"sequences": [{"id": i, "sequence": s} for i, s in pairs]}
    r = service.post("/embed", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    want = embed_sequences(embedder, _prepared(pairs))
    assert got["ids"] == [i for i, _ in pairs] and got["dim"] == 128
    assert got["truncated"] == [i for i, s in pairs if len(s) > MAX_LEN]
    assert got["lengths"] == [min(len(s), MAX_LEN) for _, s in pairs]
    np.testing.assert_allclose(np.array(got["embeddings"]), want, atol=1e-5, rtol=0)

    # Compact binary: float32 .npy is the same numbers; float16 within half precision.
    r32 = service.post("/embed", json={**body, "format": "npy"}).json()
    np.testing.assert_allclose(decode_npy(r32["embeddings_npy"]), want, atol=1e-5, rtol=0)
    r16 = service.post("/embed", json={**body, "format": "npy", "dtype": "float16"}).json()
    arr16 = decode_npy(r16["embeddings_npy"])
    assert arr16.dtype == np.float16
    np.testing.assert_allclose(arr16.astype(np.float32), want, atol=2e-3, rtol=2e-3)

    # Per-residue vectors: one [L_i, dim] block per protein, equal to the Embedder's.
    few = pairs[:3]
    rr = service.post("/embed", json={"sequences": [{"id": i, "sequence": s} for i, s in few],
                                      "per_residue": True}).json()
    _, want_res = embed_sequences(embedder, _prepared(few), per_residue=True)
    for got_r, want_r in zip(rr["per_residue"], want_res):
        np.testing.assert_allclose(np.array(got_r), want_r, atol=1e-5, rtol=0)


def test_embed_fasta_equals_cli(service, student_dir: Path, real_pairs, tmp_path: Path) -> None:
    from mtdp.cli import main
    from mtdp.outputs import read_embeddings
    from mtdp.sequences import write_fasta

    fasta = tmp_path / "in.fasta"
    write_fasta(real_pairs[20:35], fasta)
    out = tmp_path / "cli.parquet"
    assert main(["embed", str(fasta), "-o", str(out), "--model", str(student_dir),
                 "--device", "cpu", "--quiet"]) == 0
    ids, want = read_embeddings(out)
    r = service.post("/embed/fasta", content=fasta.read_bytes(),
                     headers={"content-type": "text/x-fasta"})
    assert r.status_code == 200, r.text
    assert r.json()["ids"] == ids
    np.testing.assert_allclose(np.array(r.json()["embeddings"]), want, atol=1e-5, rtol=0)


def _seqs(*pairs: tuple[str, str]) -> dict:
    return {"sequences": [{"id": i, "sequence": s} for i, s in pairs]}


BAD_INPUTS = [
    # (name, endpoint, json body or raw bytes, status, words the message must contain)
    ("invalid letter", "/embed", _seqs(("ok", "MKTAYIAK"), ("bad1", "MKT1AYI")), 422,
     ["record 2", "'bad1'", "position 4", "invalid character"]),
    ("empty sequence", "/embed", _seqs(("ok", "MKT"), ("blank", "")), 422,
     ["record 2", "'blank'", "empty sequence"]),
    ("over-long with truncate=false", "/embed",
     {**_seqs(("long", "M" * (MAX_LEN + 1))), "truncate": False}, 422,
     ["'long'", f"max length {MAX_LEN}", "truncate"]),
    ("beyond the hard limit", "/embed", _seqs(("huge", "A" * 100_001)), 422,
     ["'huge'", "exceeds the limit"]),
    ("too many sequences", "/embed",
     _seqs(*[(f"p{i}", "MKT") for i in range(MAX_SEQUENCES + 1)]), 413,
     [f"{MAX_SEQUENCES + 1} sequences", f"limit is {MAX_SEQUENCES}"]),
    ("per-residue answer too large", "/embed",
     {**_seqs(*[(f"p{i}", "M" * 150) for i in range(7)]), "per_residue": True}, 413,
     ["per-residue output", "send fewer sequences"]),
    ("duplicate id", "/embed", _seqs(("a", "MKT"), ("a", "MKV")), 422,
     ["record 2", "duplicate id"]),
    ("no sequences", "/embed", {"sequences": []}, 422, ["no sequences"]),
    ("missing field", "/embed", {"sequences": [{"id": "a", "sequence": "MK"}, {"id": "b"}]},
     422, ["record 2", "sequence"]),
    ("wrong type", "/embed", {"sequences": "MKTAYIAK"}, 422, ["sequences"]),
    ("unknown format", "/embed", {**_seqs(("a", "MKT")), "format": "xml"}, 422, ["format"]),
    ("malformed JSON", "/embed", b'{"sequences": [{"id": "a", ', 400, ["not valid JSON"]),
    ("FASTA without header", "/embed/fasta", b"MKTAYIAKQR\n", 400, ["before any '>' header"]),
    ("empty FASTA", "/embed/fasta", b"", 400, ["no FASTA records"]),
    ("FASTA empty header", "/embed/fasta", b">\nMKT\n", 400, ["empty header"]),
    ("FASTA not text", "/embed/fasta", b">a\nMK\xff\xfeT\n", 400, ["not UTF-8"]),
    ("FASTA invalid letter", "/embed/fasta", b">a\nMKT\n>b x\nMK*T\n", 422,
     ["record 2", "'b'", "position 3"]),
    ("JSON nested 20,000 deep", "/embed", b'{"sequences": ' + b"[" * 20000 + b"]" * 20000
     + b"}", 400, ["could not be parsed"]),
    ("body over the size limit", "/embed", b'{"sequences": "' + b"A" * (MAX_BODY + 10) + b'"}',
     413, [f"limit is {MAX_BODY:,}"]),
    ("unknown path", "/embedd", b"{}", 404, ["Not Found"]),
    ("FASTA too many", "/embed/fasta",
     "".join(f">p{i}\nMKT\n" for i in range(MAX_SEQUENCES + 1)).encode(), 413,
     [f"limit is {MAX_SEQUENCES}"]),
]


@pytest.mark.parametrize("name,endpoint,payload,status,words", BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_4xx_and_service_keeps_serving(service, name, endpoint, payload, status,
                                                      words) -> None:
    if isinstance(payload, bytes):
        ctype = "application/json" if endpoint == "/embed" else "text/plain"
        r = service.post(endpoint, content=payload, headers={"content-type": ctype})
    else:
        r = service.post(endpoint, json=payload)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, f"{word!r} not in {detail!r}"
    ok = service.post("/embed", json=_seqs(("after", "MKTAYIAKQR")))
    assert ok.status_code == 200 and ok.json()["ids"] == ["after"]


def test_truncation_is_reported(service, embedder) -> None:
    long = "MKTAYIAKQRQISFVKSHFSRQ" * 20          # 440 residues > MAX_LEN
    r = service.post("/embed", json=_seqs(("long", long))).json()
    assert r["truncated"] == ["long"] and r["lengths"] == [MAX_LEN]
    np.testing.assert_allclose(np.array(r["embeddings"]),
                               embed_sequences(embedder, [long[:MAX_LEN]]),
                               atol=1e-5, rtol=0)


def test_200_concurrent_requests_no_errors(service, real_pairs) -> None:
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" /
                                                  "serve_load.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    res = asyncio.run(load.run_load(str(service.base_url), real_pairs, requests=200,
                                    concurrency=200, per_request=3))
    print(res)
    assert res["errors"] == 0, res["error_samples"]
    assert res["ok"] == 200


def test_builder_rejects_unknown_model_and_args() -> None:
    from mtdp.serving import build_app

    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        build_app({"model": "no-such-model"})
    with pytest.raises(ValueError, match="unknown mtdp serve argument"):
        build_app({"modle": "x"})


def test_default_model_is_newest_registered_student(student_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from mtdp.serving import MODEL_ENV, resolve_model_spec
    from mtdp.tracking import download_student, latest_student_uri

    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'reg.db'}")
    from mtdp.pretrained import shipped_path

    # Nothing named, nothing registered: the student shipped with the package.
    assert resolve_model_spec(None) == str(shipped_path("mtdp-unirep"))
    from mtdp.evaluate.config import default_models

    models, line = default_models()  # tune/benchmark.py without --models
    assert models == ["mtdp-unirep", "aac", "kmer2"] and "shipped" in line

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'reg.db'}")
    try:
        exp = mlflow.create_experiment("serve-test",
                                       artifact_location=(tmp_path / "art").as_uri())
        # Explicit registry: an earlier test may have set MLflow's global registry URI.
        uri = f"sqlite:///{tmp_path / 'reg.db'}"
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model("mtdp-student")
        for _ in range(2):  # two versions: the newest must win
            with mlflow.start_run(experiment_id=exp) as run:
                mlflow.log_artifacts(str(student_dir), "student")
            client.create_model_version("mtdp-student", f"{run.info.artifact_uri}/student",
                                        run_id=run.info.run_id)
    finally:
        mlflow.set_tracking_uri(previous)
    # set_tracking_uri also rewrites $MLFLOW_TRACKING_URI: point it back at this registry.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert latest_student_uri() == "models:/mtdp-student/2"
    assert resolve_model_spec(None) == "models:/mtdp-student/2"
    models, line = default_models()
    assert models == ["models:/mtdp-student/2", "aac", "kmer2"] and "newest" in line
    assert (download_student("models:/mtdp-student/2") / "model.safetensors").is_file()
    monkeypatch.setenv(MODEL_ENV, str(student_dir))
    assert resolve_model_spec(None) == str(student_dir.resolve())


def test_production_config_is_valid(student_dir: Path) -> None:
    """serve/config.yaml passes Serve's own schema, and its args build the application."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from mtdp.serving import DEPLOYMENT_NAME, build_app

    cfg = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    ServeDeploySchema.model_validate(cfg)
    (app_cfg,) = cfg["applications"]
    assert app_cfg["import_path"] == "mtdp.serving:build_app"
    app = build_app({**app_cfg["args"], "model": str(student_dir)})
    opts = app._bound_deployment._deployment_config
    assert app._bound_deployment.name == DEPLOYMENT_NAME
    assert opts.autoscaling_config.max_replicas == app_cfg["args"]["max_replicas"]
    assert opts.max_ongoing_requests == app_cfg["args"]["max_ongoing_requests"]


def test_trailing_stop_is_accepted_everywhere_and_info_shows_no_path(service) -> None:
    """POST /embed follows the CLI and /embed/fasta: one trailing '*' is a stop codon."""
    a = service.post("/embed", json=_seqs(("a", "MKTAYIAKQR*")))
    b = service.post("/embed/fasta", content=b">a\nMKTAYIAKQR*\n",
                     headers={"content-type": "text/plain"})
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.json()["embeddings"] == b.json()["embeddings"] and a.json()["lengths"] == [10]
    info = service.get("/info").json()
    assert info["source"].startswith("local:") and "/" not in info["source"]


def test_store_answers_repeats_with_the_same_embeddings(service, embedder,
                                                       serve_store: Path) -> None:
    """With a store, a sequence seen before is read back (counted in /info), equal to the
    computed answer; the same sequence under a new id is a repeat too. New rows reach the
    store after the answer (write-behind, store_flush_s=1): within seconds, all of them."""
    import time

    from mtdp.embed import embed_sequences, model_table
    from mtdp.store import EmbeddingStore, seq_hash

    rng = np.random.default_rng(7)  # sequences no other test sent
    pairs = [(f"s{k}", "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 40 + 9 * k)))
             for k in range(6)]
    before = service.get("/info").json()
    assert before["store"] is True
    first = service.post("/embed", json=_seqs(*pairs))
    mid = service.get("/info").json()
    renamed = [(f"copy-{i}", s) for i, s in pairs]
    again = service.post("/embed", json=_seqs(*renamed))
    after = service.get("/info").json()
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert mid["store_computed"] - before["store_computed"] == len(pairs)
    assert after["store_computed"] == mid["store_computed"]
    assert after["store_reused"] - mid["store_reused"] == len(pairs)
    a, b = np.asarray(first.json()["embeddings"]), np.asarray(again.json()["embeddings"])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, embed_sequences(embedder, _prepared(pairs)), atol=2e-5)
    table = model_table(EmbeddingStore(serve_store), embedder)
    hashes = {seq_hash(q) for q in _prepared(pairs)}
    deadline = time.monotonic() + 30
    while table.stored(hashes) != hashes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert table.stored(hashes) == hashes
    assert service.get("/info").json()["store_pending"] == 0


def test_search_endpoint_finds_stored_proteins(service, student_dir: Path, serve_store: Path,
                                               real_pairs, tmp_path: Path) -> None:
    """POST /search: refused (409) while the store names no protein; after `mtdp embed
    --store --run` (another process's writes), a stored protein is its own rank-1 hit and a
    one-substitution copy finds its source in the top 3; bad input is named as for /embed."""
    from mtdp.cli import main
    from mtdp.sequences import write_fasta

    pairs = [(i, s) for i, s in real_pairs if len(s) <= MAX_LEN][:60]
    r = service.post("/search", json={**_seqs(pairs[0]), "k": 3})
    assert r.status_code == 409 and "run" in r.json()["detail"], r.text
    write_fasta(pairs, tmp_path / "ref.fasta")
    assert main(["embed", str(tmp_path / "ref.fasta"), "-o", str(tmp_path / "ref.parquet"),
                 "--model", str(student_dir), "--device", "cpu", "--quiet", "--store",
                 str(serve_store), "--run", "ref"]) == 0
    src_id, src = pairs[7]
    mutant = src[:10] + ("A" if src[10] != "A" else "G") + src[11:]
    r = service.post("/search", json={**_seqs(("same", src), ("mut", mutant)), "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["search"] == "exact" and body["metric"] == "cosine"
    same = [h for h in body["hits"] if h["query"] == "same"]
    assert same[0]["hit_id"] == src_id and same[0]["distance"] < 1e-4
    assert src_id in [h["hit_id"] for h in body["hits"] if h["query"] == "mut"]
    assert len(body["hits"]) == 6
    bad = service.post("/search", json={**_seqs(("ok", src), ("x", "MK1L")), "k": 3})
    assert bad.status_code == 422 and bad.json()["record"] == 2
    unknown = service.post("/search", json={**_seqs(("ok", src)), "runs": ["nope"]})
    assert unknown.status_code == 409 and "nope" in unknown.json()["detail"]
