"""A map of the protein space: embeddings projected to 2-D (PCA, t-SNE, or UMAP where
``umap-learn`` is installed), written as a table of coordinates, a scatter plot (PNG) and a
self-contained interactive page (HTML: hover shows id and label, the legend hides a class),
coloured by a label column — what users of embedding tools ask for to *see* their proteins."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .io import atomic_open, atomic_path
from .outputs import embedding_model, read_embeddings

METHODS = ("pca", "tsne", "umap")
#: Classes drawn with their own colour; the rest are grouped as "other".
MAX_CLASSES = 20
#: Proteins drawn at most by default; larger inputs are subsampled with a stated seed.
MAX_POINTS = 20_000


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
              labels: dict[str, str] | None = None, seed: int = 0,
              max_points: int = MAX_POINTS) -> dict[str, object]:
    """Project and draw: ``OUT.tsv`` (id, x, y[, label]), ``OUT.png`` and ``OUT.html`` beside
    each other (``output`` names any of them). Inputs over ``max_points`` proteins are
    subsampled (seeded) before projecting. Returns the paths and what was drawn."""
    ids, x = read_embeddings(embeddings)
    total = len(ids)
    note = f"{total:,} proteins"
    if total > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(total, max_points, replace=False))
        ids, x = [ids[i] for i in keep], x[keep]
        note = f"{max_points:,} of {total:,} proteins (random subsample, seed {seed})"
    xy = project(x, method, seed)
    stem = Path(output).with_suffix("")
    paths = {k: Path(f"{stem}.{k}") for k in ("tsv", "png", "html")}
    with atomic_open(paths["tsv"]) as fh:
        fh.write("id\tx\ty" + ("\tlabel" if labels is not None else "") + "\n")
        for pid, (a, b) in zip(ids, xy):
            tail = f"\t{labels.get(pid, '')}" if labels is not None else ""
            fh.write(f"{pid}\t{a:.5g}\t{b:.5g}{tail}\n")
    shown = _classes([labels.get(i, "") for i in ids]) if labels is not None else None
    title = f"{embedding_model(embeddings) or 'embeddings'} · {method}"
    _plot(xy, shown, paths["png"], f"{title} · {note}")
    _page(xy, ids, shown, paths["html"], title, note)
    return {**{k: str(v) for k, v in paths.items()}, "proteins": len(ids), "of": total,
            "method": method}


def _classes(labels: list[str]) -> list[str]:
    """Labels with all but the :data:`MAX_CLASSES` most frequent grouped as "other"."""
    names, counts = np.unique(labels, return_counts=True)
    keep = set(names[np.argsort(-counts, kind="stable")][:MAX_CLASSES])
    return [(v or "(no label)") if v in keep else "other" for v in labels]


def _plot(xy: np.ndarray, labels: list[str] | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6)
    else:
        shown = np.array(labels)
        for name in sorted(set(labels)):
            m = shown == name
            ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.6, label=name)
        ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def _page(xy: np.ndarray, ids: list[str], labels: list[str] | None, path: Path, title: str,
          note: str) -> None:
    """The self-contained interactive map (data inline, no network)."""
    classes = sorted(set(labels)) if labels is not None else []
    index = {c: i for i, c in enumerate(classes)}
    data = {"title": title, "note": note, "ids": ids,
            "x": [round(float(v), 4) for v in xy[:, 0]],
            "y": [round(float(v), 4) for v in xy[:, 1]],
            "classes": classes, "c": [index[v] for v in labels] if labels is not None else []}
    blob = json.dumps(data).replace("</", "<\\/")
    with atomic_open(path) as fh:
        fh.write(_PAGE.replace("__TITLE__", _escape(title)).replace("__DATA__", blob))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:13px system-ui,sans-serif;margin:16px;color:#222}
#wrap{display:flex;gap:16px;align-items:flex-start}
svg{border:1px solid #ccc;background:#fff}
circle{stroke:none;opacity:.7}circle:hover{stroke:#000;stroke-width:1.5;opacity:1}
#legend div{cursor:pointer;margin:2px 0;white-space:nowrap}#legend .off{opacity:.3}
#legend span{display:inline-block;width:10px;height:10px;margin-right:6px}
#tip{position:fixed;display:none;background:#222;color:#fff;padding:3px 6px;
border-radius:3px;pointer-events:none}
</style></head><body>
<h3 id="title"></h3><p id="note"></p>
<div id="wrap"><svg id="map" width="760" height="620"></svg><div id="legend"></div></div>
<div id="tip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
const D = JSON.parse(document.getElementById("data").textContent);
const PAL = ["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2",
  "#7f7f7f","#bcbd22","#17becf","#aec7e8","#ffbb78","#98df8a","#ff9896","#c5b0d5",
  "#c49c94","#f7b6d2","#c7c7c7","#dbdb8d","#9edae5","#393b79"];
document.getElementById("title").textContent = D.title;
document.getElementById("note").textContent = D.note + " · hover a point for its id" +
  (D.classes.length ? " and label; click a legend entry to hide it" : "");
const svg = document.getElementById("map"), NS = "http://www.w3.org/2000/svg";
const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), P = 12;
const range = a => a.reduce(([l, h], v) => [Math.min(l, v), Math.max(h, v)], [Infinity, -Infinity]);
const [x0, x1] = range(D.x), [y0, y1] = range(D.y);
const sx = (W - 2 * P) / ((x1 - x0) || 1), sy = (H - 2 * P) / ((y1 - y0) || 1);
const frag = document.createDocumentFragment();
D.ids.forEach((id, i) => {
  const c = document.createElementNS(NS, "circle");
  c.setAttribute("cx", P + (D.x[i] - x0) * sx);
  c.setAttribute("cy", H - P - (D.y[i] - y0) * sy);
  c.setAttribute("r", 3);
  c.setAttribute("fill", D.classes.length ? PAL[D.c[i] % PAL.length] : PAL[0]);
  c.dataset.i = i;
  if (D.classes.length) c.dataset.k = D.c[i];
  frag.appendChild(c);
});
svg.appendChild(frag);
const tip = document.getElementById("tip");
svg.addEventListener("mousemove", e => {
  if (e.target.tagName !== "circle") { tip.style.display = "none"; return; }
  const i = +e.target.dataset.i;
  tip.textContent = D.ids[i] + (D.classes.length ? " \u00b7 " + D.classes[D.c[i]] : "");
  tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px";
  tip.style.display = "block";
});
svg.addEventListener("mouseleave", () => { tip.style.display = "none"; });
const legend = document.getElementById("legend");
D.classes.forEach((name, k) => {
  const n = D.c.filter(v => v === k).length, row = document.createElement("div");
  row.innerHTML = '<span style="background:' + PAL[k % PAL.length] + '"></span>';
  row.appendChild(document.createTextNode(name + " (" + n + ")"));
  row.onclick = () => {
    row.classList.toggle("off");
    svg.querySelectorAll('circle[data-k="' + k + '"]').forEach(c => {
      c.style.display = row.classList.contains("off") ? "none" : ""; });
  };
  legend.appendChild(row);
});
</script></body></html>
"""
