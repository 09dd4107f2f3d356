"""Downloads with resume and verification, against a real HTTP server on 127.0.0.1 (the test
serves files it writes itself), and the local-path route of `mtdp data swissprot`."""
from __future__ import annotations

import gzip
import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mtdp.cli import main as cli_main
from mtdp.download import DownloadError, download, fetch_swissprot, parse_metalink


class _Handler(BaseHTTPRequestHandler):
    """GET with ``Range: bytes=N-`` support; can drop the connection mid-body."""

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        srv = self.server
        data = srv.files.get(self.path)
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and srv.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        cut = srv.cut.get(self.path)
        if cut is not None and (srv.cut_always or srv.requests.count((self.path, rng)) == 1
                                and rng is None):
            self.wfile.write(body[:cut])  # then close: the client sees a short read
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.cut = {}, [], {}
    srv.honour_range, srv.cut_always = True, False
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _no_sleep(_: float) -> None:
    pass


def test_resumes_after_a_dropped_connection(server, tmp_path):
    payload = os.urandom(300_000)
    server.files["/f.bin"] = payload
    server.cut["/f.bin"] = 100_000
    dest = download(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False, sleep=_no_sleep,
                    sha256=hashlib.sha256(payload).hexdigest(), chunk=8192)
    assert dest.read_bytes() == payload
    assert server.requests[0] == ("/f.bin", None)
    resumed_at = server.requests[1][1]
    assert resumed_at is not None and int(resumed_at[6:-1]) == 100_000  # "bytes=100000-"
    assert not (tmp_path / "f.bin.part").exists()


def test_continues_an_existing_part_file(server, tmp_path):
    payload = os.urandom(200_000)
    server.files["/f.bin"] = payload
    (tmp_path / "f.bin.part").write_bytes(payload[:120_000])  # left by a killed process
    download(f"{server.url}/f.bin", tmp_path / "f.bin", md5=hashlib.md5(payload).hexdigest(),
             size=len(payload), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == payload
    assert server.requests == [("/f.bin", "bytes=120000-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    payload = os.urandom(50_000)
    server.files["/f.bin"] = payload
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"x" * 10_000)
    download(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False,
             sha256=hashlib.sha256(payload).hexdigest())
    assert (tmp_path / "f.bin").read_bytes() == payload


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    server.files["/f.bin"] = b"A" * 1000
    with pytest.raises(DownloadError, match="sha256 .* expected 00"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", sha256="00" * 32, progress=False)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.url}/missing", tmp_path / "m.bin", progress=False)


def test_incomplete_download_keeps_its_part_for_the_next_call(server, tmp_path):
    payload = os.urandom(100_000)
    server.files["/f.bin"] = payload
    server.cut["/f.bin"], server.cut_always = 30_000, True
    with pytest.raises(DownloadError, match="incomplete after 2 attempt"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", retries=1, progress=False,
                 sleep=_no_sleep, chunk=4096)
    kept = (tmp_path / "f.bin.part").stat().st_size
    assert 30_000 <= kept < len(payload)
    server.cut_always = False
    server.cut.clear()
    download(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False, size=len(payload))
    assert (tmp_path / "f.bin").read_bytes() == payload
    assert server.requests[-1][1] == f"bytes={kept}-"


METALINK = """<?xml version="1.0" encoding="UTF-8"?>
<metalink xmlns="http://www.metalinker.org/" version="3.0">
<files>
<file name="uniprot_sprot.fasta.gz">
<size>{size}</size>
<verification><hash type="md5">{md5}</hash></verification>
<resources><url location="ch">ftp://example/uniprot_sprot.fasta.gz</url></resources>
</file>
</files>
</metalink>
"""


def test_swissprot_download_is_verified_with_the_metalink(server, tmp_path):
    fasta = gzip.compress(b">sp|P1|X_HUMAN test\nMKTAYIAKQR\n>sp|P2|Y_HUMAN\nACDE\n")
    server.files["/complete/uniprot_sprot.fasta.gz"] = fasta
    server.files["/complete/RELEASE.metalink"] = METALINK.format(
        size=len(fasta), md5=hashlib.md5(fasta).hexdigest()).encode()
    assert parse_metalink(server.files["/complete/RELEASE.metalink"].decode()) == {
        "uniprot_sprot.fasta.gz": {"size": len(fasta), "md5": hashlib.md5(fasta).hexdigest()}}
    path = fetch_swissprot(tmp_path, url=f"{server.url}/complete/uniprot_sprot.fasta.gz",
                           metalink_url=f"{server.url}/complete/RELEASE.metalink", progress=False)
    assert path == tmp_path / "uniprot_sprot.fasta.gz" and path.read_bytes() == fasta
    # A release whose published MD5 does not match what arrives is refused.
    server.files["/complete/RELEASE.metalink"] = METALINK.format(size=len(fasta),
                                                                 md5="0" * 32).encode()
    with pytest.raises(DownloadError, match="md5"):
        fetch_swissprot(tmp_path / "other", url=f"{server.url}/complete/uniprot_sprot.fasta.gz",
                        metalink_url=f"{server.url}/complete/RELEASE.metalink", progress=False)


def test_swissprot_local_path_route(tmp_path, real_fasta, capsys):
    assert cli_main(["data", "swissprot", "--local", str(real_fasta)]) == 0
    assert capsys.readouterr().out.strip() == str(real_fasta)
    gz = tmp_path / "sp.fasta.gz"
    gz.write_bytes(gzip.compress(Path(real_fasta).read_bytes()[:5000]))
    assert fetch_swissprot(local=str(gz)) == gz
    assert cli_main(["data", "swissprot", "--local", str(tmp_path / "none.fasta")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello\n")
    assert cli_main(["data", "swissprot", "--local", str(tmp_path / "notes.txt")]) == 2
    assert "not a FASTA file" in capsys.readouterr().err


def test_pinned_benchmark_files_are_the_shared_data(data_dir) -> None:
    """Every pinned checksum of `mtdp data fetch benchmarks` is that of the file the
    benchmark reads from the shared data (the same bytes, from the same commits)."""
    from mtdp.evaluate import fetch as bd
    from mtdp.io import hash_file

    pinned = [f for f in bd.FILES if f.sha256]
    assert len(pinned) == 9
    for f in pinned:
        assert hash_file(data_dir / f.path) == f.sha256, f.path


def test_fetch_benchmarks_resumes_verifies_and_feeds_the_readers(data_dir, tmp_path,
                                                                 monkeypatch, capsys) -> None:
    import dataclasses

    from mtdp.evaluate import fetch as bd
    from mtdp.evaluate.tasks import load_task
    from mtdp.cli import main as cli
    from mtdp.io import hash_file

    # The real plan, served from file:// URLs: single files are the shared copies themselves;
    # DeepLoc 2.0 is cut into two CSV pieces (header in each) that must concatenate back to
    # the pinned checksum.
    src = (data_dir / "deeploc2/swissprot_train_val_5partitions.csv").read_bytes()
    lines = src.splitlines(keepends=True)
    half = len(lines) // 2
    pieces = [tmp_path / "p1.csv", tmp_path / "p2.csv"]
    pieces[0].write_bytes(b"".join(lines[:half]))
    pieces[1].write_bytes(lines[0] + b"".join(lines[half:]))
    plan = []
    for f in bd.FILES:
        if f.path.startswith("deeploc2/"):
            plan.append(dataclasses.replace(f, pieces=tuple(
                bd.Piece(p.as_uri(), hash_file(p)) for p in pieces)))
        elif f.sha256:
            plan.append(dataclasses.replace(f, pieces=(bd.Piece(
                (data_dir / f.path).as_uri(), f.sha256),)))
    monkeypatch.setattr(bd, "FILES", tuple(plan))
    out = tmp_path / "data"
    assert cli(["data", "fetch", "benchmarks", "-o", str(out), "--quiet"]) == 0
    assert str(out) in capsys.readouterr().out
    for f in plan:
        assert (out / f.path).read_bytes() == (data_dir / f.path).read_bytes(), f.path
    assert not (out / ".pieces").exists()
    assert len(load_task("esol", out)) > 3000 and len(load_task("localization", out)) > 1000
    # A rerun downloads nothing: everything present verifies.
    monkeypatch.setattr(bd, "download", lambda *a, **k: pytest.fail("downloaded again"))
    assert cli(["data", "fetch", "benchmarks", "-o", str(out), "--quiet"]) == 0
    assert "present, verified" in capsys.readouterr().out
    assert cli(["data", "fetch", "benchmarks", "--local", str(out)]) == 0
    # A damaged file is named, never accepted.
    (out / "solubility/esol/eSol_test.csv").write_text("gene,solubility,sequence\n")
    assert cli(["data", "fetch", "benchmarks", "--local", str(out)]) == 1
    assert "eSol_test.csv: sha256 differs" in capsys.readouterr().err
    assert cli(["data", "fetch", "benchmarks", "-o", str(out), "--quiet"]) == 1
    assert cli(["data", "fetch", "benchmarks", "--tasks", "nope"]) == 2


def test_fetch_refuses_a_piece_with_the_wrong_checksum(tmp_path, monkeypatch, capsys) -> None:
    from mtdp.evaluate import fetch as bd
    from mtdp.cli import main as cli

    piece = tmp_path / "x.csv"
    piece.write_text("a,b\n1,2\n")
    monkeypatch.setattr(bd, "FILES", (bd.BenchmarkFile("esol", "solubility/esol/eSol_test.csv",
                                                       "0" * 64, (bd.Piece(piece.as_uri(),
                                                                           "0" * 64),)),))
    assert cli(["data", "fetch", "benchmarks", "-o", str(tmp_path / "d"), "--quiet"]) == 1
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "d/solubility/esol/eSol_test.csv").exists()
