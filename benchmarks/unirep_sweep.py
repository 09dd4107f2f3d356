"""Quick sweep of distillation settings for the UniRep preset (in-process, no Ray/MLflow).

Distils the ``tiny`` student from UniRep-1900 + UniRep-256 on a DeepLoc 2.0 pool
(partitions 0-3, truncated to ``--max-len``) with :class:`mtdp.distill.Distiller` (uniform
selector), then scores each student on 800 held-out proteins of partition 4 (≤ 512 residues):
5-fold logistic-regression probes for 10-class localization (accuracy) and membrane vs soluble
(accuracy), plus the cosine between each teacher head's output and the real (standardised)
teacher embedding. Teacher embeddings are cached in ``--cache``. This is how the preset's
default training settings were picked; the preset itself is the real, Tune-probed benchmark.

    python benchmarks/unirep_sweep.py --baselines
    python benchmarks/unirep_sweep.py '{"label": "mlm", "selector": "none"}' \\
        '{"label": "cos", "kd": "cosine", "mlm_w": 0.1, "dropout": 0.0}'

Each JSON object may set: selector, kd (kl|cosine|mse), epochs, preset, lr, bs, kd_w, mlm_w,
temp, dropout (defaults: uniform, cosine, 10, tiny, 3e-3, 8, 1.0, 0.1, 1.0, 0.0), and res_w /
res_teachers for per-residue distillation (``residue_weight`` / ``residue_teachers`` of
mtdp.distill; default 0 = off, teachers default both); per-residue teacher states of the pool
are cached as float16 (UniRep-1900: 1.8 GB for the default pool).

    python benchmarks/unirep_sweep.py '{"label": "res1-256only", "res_w": 1.0,
                                        "res_teachers": ["unirep256"]}'
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = ["unirep1900", "unirep256"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", help="JSON objects, one student each")
    p.add_argument("--baselines", action="store_true", help="probe the teachers and aac")
    p.add_argument("--pool", type=int, default=2000)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--cache", default="runs/unirep-sweep")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mtdp.distill import (DistillConfig, Distiller, TeacherStats, build_selector,
                              build_student, make_batch)
    from mtdp.embed import embed_sequences
    from mtdp.embedder import StudentEmbedder, load_embedder
    from mtdp.sequences import prepare
    from mtdp.losses import standardise
    from mtdp.teacher_data import residue_column
    from mtdp.teachers import load_teacher
    from mtdp.tokenizer import ResidueTokenizer

    data = Path(os.environ.get("MTDP_DATA_DIR") or ROOT.parent / "shared" / "data")
    df = pd.read_csv(data / "deeploc2" / "swissprot_train_val_5partitions.csv")
    pool = df[df.partition < 4].sample(args.pool, random_state=0)
    ev = df[df.partition == 4].sample(800, random_state=1)
    pseq = [prepare(s, max_len=args.max_len) for s in pool.sequence]
    eseq = [prepare(s, max_len=512) for s in ev.sequence]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    def cached(name: str, teacher: str, seqs: list[str]) -> np.ndarray:
        path = cache / f"{name}.npy"
        if not path.exists():
            np.save(path, embed_sequences(load_teacher(teacher), seqs))
        return np.load(path)

    temb = {t: cached(f"pool_{t}_{args.pool}_{args.max_len}", t, pseq) for t in TEACHERS}

    residue_tables: dict[str, np.ndarray] = {}

    def cached_residues(teacher: str) -> np.ndarray:
        """Per-residue teacher states of the pool, concatenated in pool order (float32; cached
        on disk as float16, loaded once per process)."""
        if teacher not in residue_tables:
            path = cache / f"pool_res_{teacher}_{args.pool}_{args.max_len}.npy"
            if not path.exists():
                _, res = embed_sequences(load_teacher(teacher), pseq, per_residue=True)
                np.save(path, np.concatenate(res).astype(np.float16))
            residue_tables[teacher] = np.load(path).astype(np.float32)
        return residue_tables[teacher]

    eemb = {t: cached(f"eval_{t}", t, eseq) for t in TEACHERS}
    labels = {"localization": np.asarray(ev.label.astype(str).tolist()),
              "membrane": np.asarray(ev.membrane.astype(float).astype(int).tolist())}

    def probe(x: np.ndarray) -> dict[str, float]:
        cv = StratifiedKFold(5, shuffle=True, random_state=0)
        return {k: round(float(cross_val_score(make_pipeline(
            StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)), x, y, cv=cv).mean()), 3)
            for k, y in labels.items()}

    if args.baselines:
        for t in TEACHERS:
            print("RESULT", t, probe(eemb[t]), flush=True)
        print("RESULT aac", probe(embed_sequences(load_embedder("aac"), eseq)), flush=True)

    for spec in args.configs:
        kw = {"selector": "uniform", "kd": "cosine", "epochs": 10, "preset": "tiny",
              "lr": 3e-3, "bs": 8, "kd_w": 1.0, "mlm_w": 0.1, "temp": 1.0, "dropout": 0.0,
              **json.loads(spec)}
        label = kw.pop("label", spec)
        cfg = DistillConfig(preset=kw["preset"], dropout=kw["dropout"], selector=kw["selector"],
                            kd_loss=kw["kd"], lr=kw["lr"], batch_size=kw["bs"],
                            kd_weight=kw["kd_w"], mlm_weight=kw["mlm_w"],
                            temperature=kw["temp"], seed=0, mlflow=False)
        stats = TeacherStats(TEACHERS, TEACHERS, [temb[t].shape[1] for t in TEACHERS],
                             [torch.tensor(temb[t].mean(0)) for t in TEACHERS],
                             [torch.tensor(temb[t].std(0)) for t in TEACHERS])
        bs, n = kw["bs"], len(pseq)
        res_t = kw.get("res_teachers", TEACHERS) if kw.get("res_w") else []
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in pseq])])
        rtab = {t: cached_residues(t) for t in res_t}
        # Per-residue targets as mtdp.distill reads them: a column per teacher, standardised
        # with the pool's per-residue mean / std.
        stats.residues = {t: (residue_column(t), torch.from_numpy(v.mean(0)),
                              torch.from_numpy(v.std(0))) for t, v in rtab.items()}
        cfg.residue_weight = float(kw.get("res_w") or 1.0)
        model = build_student(cfg, stats, args.max_len)
        if kw["epochs"]:
            d = Distiller(model, build_selector(cfg, stats, model.config.d_model), cfg,
                          kw["epochs"] * (n // bs))
            rng, t0 = np.random.default_rng(0), time.time()
            for ep in range(kw["epochs"]):
                order = rng.permutation(n)
                for i in range(0, n - bs + 1, bs):
                    idx = order[i:i + bs]
                    rows = {"id": pool.accession.values[idx], "sequence": [pseq[j] for j in idx],
                            **{t: temb[t][idx] for t in TEACHERS},
                            **{residue_column(t): [v[offsets[j]:offsets[j + 1]] for j in idx]
                               for t, v in rtab.items()}}
                    m = d.train_step(make_batch(rows, stats, mlm_prob=0.15, seed=ep))
                print(f"  {label} epoch {ep} {time.time() - t0:.0f} s mlm {m['train/mlm']:.3f} "
                      f"kd {m['train/kd']:.3f}", flush=True)
        model.eval()
        cos = {}
        with torch.no_grad():
            tok = ResidueTokenizer()
            parts: dict[str, list] = {t: [] for t in TEACHERS}
            for i in range(0, len(eseq), 32):
                ids, att = tok.batch_encode(eseq[i:i + 32])
                heads = model.teacher_logits(model(ids, att)["embedding"])
                for k, t in enumerate(TEACHERS):
                    z = standardise(torch.tensor(eemb[t][i:i + 32]), stats.mean[k], stats.std[k])
                    parts[t].append(torch.nn.functional.cosine_similarity(heads[t], z, dim=-1))
            cos = {t: round(float(torch.cat(v).mean()), 3) for t, v in parts.items()}
        x = embed_sequences(StudentEmbedder(model), eseq)
        print("RESULT", label, probe(x), "held-out head cosine", cos, flush=True)


if __name__ == "__main__":
    main()
