"""Sequence clusters with MMseqs2 (the ``mmseqs`` binary, optional): what keeps relatives on
one side of a cross-validation fold when a user's labels come without homology groups
(``mtdp predict fit --sequences``), and the binary the benchmark's best-hit baseline uses."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

#: Cluster rule: ≥ 30 % identity over ≥ 80 % of both sequences (MMseqs2 --cov-mode 0), the
#: common threshold below which sequence similarity stops implying shared function.
MIN_SEQ_ID, COVERAGE = 0.3, 0.8


def mmseqs_binary() -> str | None:
    """Path of ``mmseqs`` (``$MTDP_MMSEQS`` or on PATH), or None."""
    return os.environ.get("MTDP_MMSEQS") or shutil.which("mmseqs")


def install_hint() -> str:
    return ("install it: `apt install mmseqs2` or `conda install -c bioconda mmseqs2`; or set "
            "MTDP_MMSEQS")


@contextlib.contextmanager
def mmseqs_run(sequences: list[str], args: Callable[[Path], list[str]], missing: str,
               binary: str | None = None) -> Iterator[Path]:
    """Run ``mmseqs`` on ``sequences`` (written to ``FOLDER/in.fasta`` with ids 0..N-1) with
    the arguments ``args(FOLDER)``, FOLDER a temporary folder; yields it to read the results.

    Raises:
        RuntimeError: no ``mmseqs`` binary (``missing``), or MMseqs2 failed (its last
            messages quoted).
    """
    from .sequences import write_fasta

    exe = binary or mmseqs_binary()
    if not exe:
        raise RuntimeError(missing)
    with tempfile.TemporaryDirectory(prefix="mtdp-mmseqs-") as tmp:
        folder = Path(tmp)
        write_fasta([(str(i), s) for i, s in enumerate(sequences)], folder / "in.fasta")
        cmd = [exe, *args(folder)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"mmseqs {cmd[1]} failed ({done.returncode}): "
                               f"{done.stderr[-2000:]}")
        yield folder


def cluster(ids: list[str], sequences: list[str], *, min_seq_id: float = MIN_SEQ_ID,
            coverage: float = COVERAGE, threads: int = 2, binary: str | None = None
            ) -> dict[str, str]:
    """``id → representative id`` of its cluster (``mmseqs easy-cluster``).

    Raises:
        RuntimeError: no ``mmseqs`` binary, or MMseqs2 failed (its last messages quoted).
    """
    def args(tmp: Path) -> list[str]:
        return ["easy-cluster", str(tmp / "in.fasta"), str(tmp / "clu"), str(tmp / "work"),
                "--min-seq-id", str(min_seq_id), "-c", str(coverage), "--cov-mode", "0",
                "--threads", str(threads), "-v", "1"]

    index = {str(i): pid for i, pid in enumerate(ids)}
    out = {}
    with mmseqs_run(sequences, args, f"no `mmseqs` binary on PATH: {install_hint()}",
                    binary) as tmp, open(tmp / "clu_cluster.tsv") as fh:
        for line in fh:
            rep, member = line.rstrip("\n").split("\t")
            out[index[member]] = index[rep]
    return out
