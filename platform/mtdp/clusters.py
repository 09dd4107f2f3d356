"""Sequence clusters with MMseqs2 (the ``mmseqs`` binary, optional): what keeps relatives on
one side of a cross-validation fold when a user's labels come without homology groups
(``mtdp predict fit --sequences``), and the binary the benchmark's best-hit baseline uses."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

#: Cluster rule: ≥ 30 % identity over ≥ 80 % of both sequences (MMseqs2 --cov-mode 0), the
#: common threshold below which sequence similarity stops implying shared function.
MIN_SEQ_ID, COVERAGE = 0.3, 0.8


def mmseqs_binary() -> str | None:
    """Path of ``mmseqs`` (``$MTDP_MMSEQS`` or on PATH), or None."""
    return os.environ.get("MTDP_MMSEQS") or shutil.which("mmseqs")


def install_hint() -> str:
    return ("install it: `apt install mmseqs2` or `conda install -c bioconda mmseqs2`; or set "
            "MTDP_MMSEQS")


def cluster(ids: list[str], sequences: list[str], *, min_seq_id: float = MIN_SEQ_ID,
            coverage: float = COVERAGE, threads: int = 2, binary: str | None = None
            ) -> dict[str, str]:
    """``id → representative id`` of its cluster (``mmseqs easy-cluster``).

    Raises:
        RuntimeError: no ``mmseqs`` binary, or MMseqs2 failed (its last messages quoted).
    """
    from .sequences import write_fasta

    exe = binary or mmseqs_binary()
    if not exe:
        raise RuntimeError(f"no `mmseqs` binary on PATH: {install_hint()}")
    index = {str(i): pid for i, pid in enumerate(ids)}
    with tempfile.TemporaryDirectory(prefix="mtdp-cluster-") as tmp:
        fasta = Path(tmp) / "in.fasta"
        write_fasta([(str(i), s) for i, s in enumerate(sequences)], fasta)
        cmd = [exe, "easy-cluster", str(fasta), str(Path(tmp) / "clu"), str(Path(tmp) / "work"),
               "--min-seq-id", str(min_seq_id), "-c", str(coverage), "--cov-mode", "0",
               "--threads", str(threads), "-v", "1"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"mmseqs easy-cluster failed ({done.returncode}): "
                               f"{done.stderr[-2000:]}")
        out = {}
        with open(Path(tmp) / "clu_cluster.tsv") as fh:
            for line in fh:
                rep, member = line.rstrip("\n").split("\t")
                out[index[member]] = index[rep]
    return out
