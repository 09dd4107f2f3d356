"""``mtdp predict``: fit a predictor on your own labels from embeddings, and apply it;
``mtdp map``: the embeddings drawn in 2-D."""
from __future__ import annotations

import argparse
import json
import sys

from ..config import bounded

EPILOG = """\
examples:
  mtdp embed train.fasta -o train.parquet && mtdp embed new.fasta -o new.parquet
  mtdp predict fit train.parquet labels.tsv -o my-predictor            # id<TAB>label
  mtdp predict fit train.parquet labels.tsv -o p1 --sequences train.fasta   # MMseqs2 folds
  mtdp predict fit train.parquet labels.tsv -o p2 --group-column cluster --kind multilabel
  mtdp predict apply my-predictor new.parquet -o predictions.tsv

labels: a TSV (or .csv) with a header; --label-column holds a class, a number (regression)
or several classes separated by ';' (multi-label). --group-column (clusters, partitions) or
--sequences (MMseqs2 clusters, where mmseqs is installed) keeps relatives in one fold, so the
printed CV score is not inflated by homologues.
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="train a predictor on your labels and apply it",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = p.add_subparsers(dest="predict_command", required=True)
    fit = psub.add_parser("fit", help="cross-validate, fit and save a predictor")
    fit.add_argument("embeddings", help="embeddings file from `mtdp embed` (.parquet/.h5/.npy)")
    fit.add_argument("labels", help="TSV/CSV with an id column and a label column")
    fit.add_argument("-o", "--output", required=True, help="new folder for the predictor")
    fit.add_argument("--kind", default="auto", choices=["auto", "binary", "multiclass",
                                                        "multilabel", "regression"])
    fit.add_argument("--id-column", default="id")
    fit.add_argument("--label-column", default="label")
    fit.add_argument("--group-column", default=None,
                     help="folds keep each group together (clusters, homology partitions)")
    fit.add_argument("--sequences", default=None, metavar="FASTA", help=(
        "the labelled proteins' sequences: without --group-column, folds follow MMseqs2 "
        "clusters (30 %% identity, 80 %% coverage) where `mmseqs` is installed"))
    fit.add_argument("--folds", type=bounded(int, ge=2, le=100), default=5)
    fit.add_argument("--hidden", type=bounded(int, ge=1, le=65536), default=256,
                     help="hidden units of the MLP")
    fit.add_argument("--seed", type=bounded(int, ge=0), default=0)
    fit.add_argument("--no-mlflow", dest="mlflow", action="store_false",
                     help="do not log the fit to MLflow (default: logged, like the benchmark; "
                          "$MLFLOW_TRACKING_URI or ./mlflow.db)")
    fit.add_argument("--experiment", default="mtdp", help="MLflow experiment")
    fit.set_defaults(func=_run_fit)
    app = psub.add_parser("apply", help="predict proteins from their embeddings")
    app.add_argument("predictor", help="folder written by `mtdp predict fit`")
    app.add_argument("embeddings", help="embeddings file of the same model")
    app.add_argument("-o", "--output", required=True, help="predictions TSV")
    app.set_defaults(func=_run_apply)


def _run_fit(args: argparse.Namespace) -> int:
    from ..predictor import fit_predictor, log_predictor

    groups, grouped_by = _clusters(args)
    card = fit_predictor(args.embeddings, args.labels, args.output, kind=args.kind,
                         label_column=args.label_column, id_column=args.id_column,
                         group_column=args.group_column, folds=args.folds,
                         hidden=args.hidden, seed=args.seed, groups=groups,
                         grouped_by=grouped_by)
    cv = {k: v for k, v in card.cv.items() if isinstance(v, dict)}
    run = log_predictor(card, args.output, embeddings=args.embeddings, labels=args.labels,
                        seed=args.seed, experiment=args.experiment) if args.mlflow else None
    print(json.dumps({"output": args.output, "kind": card.kind, "proteins": card.proteins,
                      "classes": len(card.classes), "cv": cv, "mlflow_run": run}))
    return 0


def _clusters(args: argparse.Namespace) -> tuple[dict[str, str] | None, str | None]:
    """MMseqs2 clusters of ``--sequences`` as fold groups where no --group-column is given;
    says so on stderr when folds stay random."""
    from ..clusters import COVERAGE, MIN_SEQ_ID, cluster, install_hint, mmseqs_binary

    if args.group_column is not None:
        return None, None
    why = "no --group-column and no --sequences"
    if args.sequences:
        if mmseqs_binary():
            from ..sequences import read_fasta

            recs = read_fasta(args.sequences)
            groups = cluster([r.id for r in recs], [r.sequence for r in recs])
            print(f"[predict] folds follow {len(set(groups.values())):,} MMseqs2 clusters of "
                  f"{len(groups):,} proteins", file=sys.stderr)
            return groups, (f"mmseqs2 clusters (min-seq-id {MIN_SEQ_ID}, coverage "
                            f"{COVERAGE})")
        why = f"no `mmseqs` binary to cluster --sequences ({install_hint()})"
    print(f"[predict] random folds ({why}): relatives of a test protein may sit in training "
          "and flatter the CV score; give --sequences with mmseqs installed, or a "
          "--group-column (clusters, homology partitions)", file=sys.stderr)
    return None, None


def _run_apply(args: argparse.Namespace) -> int:
    from ..predictor import apply_predictor

    n = apply_predictor(args.predictor, args.embeddings, args.output)
    print(json.dumps({"output": args.output, "proteins": n}))
    return 0


def add_map(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("map", help="draw embeddings in 2-D (PCA, t-SNE, UMAP) coloured by a label",
                       description="A map of the protein space: OUT.tsv (id, x, y[, label]), "
                                   "OUT.png and OUT.html (interactive: hover shows id and "
                                   "label), all three beside each other.")
    p.add_argument("embeddings", help="embeddings file from `mtdp embed`")
    p.add_argument("-o", "--output", required=True,
                   help="OUT.html, OUT.tsv or OUT.png: the three are written by that stem")
    p.add_argument("--method", choices=["pca", "tsne", "umap"], default="pca",
                   help="umap needs umap-learn installed")
    p.add_argument("--labels", default=None, help="TSV/CSV with id and label columns (colours)")
    p.add_argument("--label-column", "--color", dest="label_column", default="label",
                   help="the column of --labels the points are coloured by")
    p.add_argument("--id-column", default="id")
    p.add_argument("--max-points", type=bounded(int, ge=3), default=20_000,
                   help="larger inputs are subsampled to this many proteins (seeded)")
    p.add_argument("--seed", type=bounded(int, ge=0), default=0)
    p.set_defaults(func=_run_map)


def _run_map(args: argparse.Namespace) -> int:
    from ..predictor import read_labels
    from ..projection import write_map

    labels = None
    if args.labels:
        lab = read_labels(args.labels, args.label_column, args.id_column, min_rows=1)
        labels = dict(zip(lab.ids, lab.values))
    print(json.dumps(write_map(args.embeddings, args.output, method=args.method,
                               labels=labels, seed=args.seed, max_points=args.max_points)))
    return 0
