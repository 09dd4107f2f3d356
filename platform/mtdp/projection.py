"""A map of the protein space: embeddings projected to 2-D (PCA, t-SNE, or UMAP where
``umap-learn`` is installed), written as a table of coordinates and a scatter plot coloured
by a label column — what users of embedding tools ask for to *see* their proteins."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import atomic_open, atomic_path
from .outputs import embedding_model, read_embeddings

METHODS = ("pca", "tsne", "umap")
#: Classes drawn with their own colour; the rest are grouped as "other".
MAX_CLASSES = 20


def project(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """``[N, 2]`` coordinates of the rows of ``x`` (standardised first).

    Raises:
        ValueError: an unknown method, fewer than 3 proteins, or ``umap`` without umap-learn.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if len(x) < 3:
        raise ValueError(f"a map needs at least 3 proteins, got {len(x)}")
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(np.asarray(x, dtype=np.float64))
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(z)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, random_state=seed, init="pca",
                    perplexity=min(30.0, (len(z) - 1) / 3)).fit_transform(z)
    try:
        import umap
    except ImportError:
        raise ValueError("--method umap needs umap-learn (pip install umap-learn); "
                         "pca and tsne need nothing more") from None
    return umap.UMAP(n_components=2, random_state=seed).fit_transform(z)


def write_map(embeddings: str | Path, output: str | Path, *, method: str = "pca",
              labels: dict[str, str] | None = None, seed: int = 0) -> int:
    """``output`` (a ``.tsv`` of id, x, y[, label]) and, beside it, the same name ``.png``
    (a scatter plot); returns the proteins drawn."""
    ids, x = read_embeddings(embeddings)
    xy = project(x, method, seed)
    out = Path(output)
    with atomic_open(out) as fh:
        fh.write("id\tx\ty" + ("\tlabel" if labels is not None else "") + "\n")
        for pid, (a, b) in zip(ids, xy):
            tail = f"\t{labels.get(pid, '')}" if labels is not None else ""
            fh.write(f"{pid}\t{a:.5g}\t{b:.5g}{tail}\n")
    _plot(xy, [labels.get(i, "") for i in ids] if labels is not None else None,
          out.with_suffix(".png"), f"{embedding_model(embeddings) or 'embeddings'} · {method}")
    return len(ids)


def _plot(xy: np.ndarray, labels: list[str] | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6)
    else:
        names, counts = np.unique(labels, return_counts=True)
        keep = set(names[np.argsort(-counts)][:MAX_CLASSES])
        shown = np.array([v if v in keep else "other" for v in labels])
        for name in sorted(set(shown)):
            m = shown == name
            ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.6, label=name or "(no label)")
        ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
