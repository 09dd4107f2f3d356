"""Measurements behind ``benchmarks/embed_job.py``: generated inputs with a real length
distribution, random-weight students, and one measured run (one-process engine or the job)
with the peak RSS of every process of the job's tree."""
from __future__ import annotations

import os
import resource
import threading
import time

import numpy as np

AA = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)


def _deeploc_csv():
    from mtdp.io import data_dir

    return data_dir() / "deeploc2" / "swissprot_train_val_5partitions.csv"


def lengths_source() -> str:
    """Where :func:`real_lengths` takes its lengths from, for the benchmark's header."""
    path = _deeploc_csv()
    if path.is_file():
        return f"DeepLoc 2.0's protein lengths ({path})"
    return (f"log-normal lengths: {path} not found (set MTDP_DATA_DIR to compare with the "
            "README's figures)")


def real_lengths() -> np.ndarray:
    """DeepLoc 2.0's protein lengths ($MTDP_DATA_DIR), else a log-normal with their median
    (~420) and spread."""
    import csv

    path = _deeploc_csv()
    if path.is_file():
        csv.field_size_limit(1 << 24)
        with open(path, newline="") as fh:
            return np.array([len(r["sequence"]) for r in csv.DictReader(fh)])
    return np.clip(np.random.default_rng(1).lognormal(6.05, 0.62, 20_000), 20, 5000
                   ).astype(int)


def generate_inputs(path: str, n: int, duplicates: float = 0.0, seed: int = 0) -> str:
    """A FASTA of ``n`` proteins (random residues, real lengths); a ``duplicates`` fraction
    repeats an earlier sequence under a new id. Written in chunks (bounded memory)."""
    rng = np.random.default_rng(seed)
    lengths = real_lengths()
    kept: list[bytes] = []
    with open(path, "wb") as fh:
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            lens = rng.choice(lengths, size=m)
            res = AA[rng.integers(0, 20, size=int(lens.sum()))].tobytes()
            offs = np.concatenate([[0], np.cumsum(lens)])
            for k in range(m):
                if kept and rng.random() < duplicates:
                    seq = kept[int(rng.integers(len(kept)))]
                else:
                    seq = res[offs[k]:offs[k + 1]]
                    if len(kept) < 5000:
                        kept.append(seq)
                fh.write(b">P%08d\n%s\n" % (start + k, seq))
    return path


def save_random_student(path: str, preset: str, max_len: int) -> str:
    """A random-weight student of a preset, saved the real way (its speed is the model's)."""
    import torch

    from mtdp.models.student import StudentConfig, StudentModel

    torch.manual_seed(0)
    StudentModel(StudentConfig.preset(preset, max_len=max_len)).save(path)
    return path


class TreeRSS:
    """Peak RSS, USS (``<role>_uss``) and anonymous memory (``<role>_anon``; MB) per role
    over this process's tree and itself, sampled every ``every`` seconds:
    ``embed`` (actors running EmbedActor), ``writer`` (StoreWriter), ``other`` (other Ray
    workers), ``system`` (raylet, GCS, dashboard...), ``driver`` (this process; its RSS is
    the kernel's high-water mark). USS still counts object-store pages only this process
    maps; anonymous memory is the heaps alone."""

    def __init__(self, every: float = 0.5) -> None:
        self.peak: dict[str, float] = {}
        self.other_worker = ""  # the title of the "other" worker at its anonymous peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    @staticmethod
    def role(cmdline: str) -> str:
        if "EmbedActor" in cmdline:
            return "embed"
        if "StoreWriter" in cmdline:
            return "writer"
        return "other" if cmdline.startswith("ray::") else "system"

    def _run(self, every: float) -> None:
        import psutil

        from .memory import anon_bytes

        me = psutil.Process()
        while not self._stop.wait(every):
            self._peak("driver_uss", me.memory_full_info().uss)
            self._peak("driver_anon", anon_bytes(me.pid))
            for p in me.children(recursive=True):
                try:
                    role = self.role(" ".join(p.cmdline()))
                    mem = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                # RSS counts shared pages too (Ray's object store mapped into the process,
                # libraries); USS is the memory the process alone holds.
                self._peak(role, mem.rss)
                self._peak(f"{role}_uss", mem.uss)
                if self._peak(f"{role}_anon", anon_bytes(p.pid)) and role == "other":
                    self.other_worker = " ".join(p.cmdline())[:100]

    def _peak(self, key: str, nbytes: float) -> bool:
        """Keep the larger; ``True`` when this one is a new peak."""
        if nbytes / 2**20 <= self.peak.get(key, 0.0):
            return False
        self.peak[key] = nbytes / 2**20
        return True

    def __enter__(self) -> "TreeRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak["driver"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def rounded(self) -> dict[str, int]:
        return {k: int(round(v)) for k, v in self.peak.items()}


def child_main(mode: str, fasta: str, model: str, out: str, actors: str = "1") -> dict:
    """One measured run in this (fresh) process: ``one`` = ``embed_file`` with one torch
    thread (an actor's share on 2 CPUs); ``job`` = ``run_embed_job`` on a fresh local Ray."""
    if mode == "one":
        import torch

        from mtdp.embed import embed_file
        from mtdp.models.registry import load_embedder

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        s = embed_file(load_embedder(model, device="cpu"), fasta, out, progress=False)
        return {"computed": s.proteins, "seconds": s.seconds, "engine_seconds": s.seconds,
                "proteins_per_s": s.proteins / s.seconds,
                "wall_s": time.perf_counter() - t0}
    import ray

    from mtdp.embed_job import EmbedJobConfig, run_embed_job

    cfg = EmbedJobConfig(inputs=[fasta], model=model, store=os.path.join(out, "store"),
                         workdir=os.path.join(out, "work"), actors=int(actors), track=False,
                         progress=False)
    with TreeRSS() as rss:
        r = run_embed_job(cfg)
        ray.shutdown()
    return {"computed": r.computed, "unique": r.unique, "proteins": r.proteins,
            "seconds": r.seconds, "proteins_per_s": r.proteins_per_s,
            "engine_seconds": r.extra.get("actor_seconds", 0.0),
            "peak_rss_mb": rss.rounded(), "other_worker": rss.other_worker}
