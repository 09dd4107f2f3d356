"""`mtdp map`'s interactive page in a real browser (headless Chromium, Debian's `chromium`):
hovering a point shows its id and label, a legend click hides that class. Skipped, with a
message, where no Chromium is installed."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mtdp.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Appended to the page: hover point 5, click the second legend entry, record what shows.
PROBE = """<script>{
const c = document.querySelector('circle[data-i="5"]'), r = c.getBoundingClientRect();
c.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: r.x + 2, clientY: r.y + 2}));
document.querySelectorAll('#legend div')[1].click();
const tip = document.getElementById('tip');
document.body.dataset.probe = [tip.textContent, getComputedStyle(tip).display,
  document.querySelectorAll('circle').length,
  [...document.querySelectorAll('circle')].filter(x => x.style.display === 'none').length
].join('|');
}</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt install chromium)")
def test_map_page_hover_and_legend_in_headless_chromium(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    ids = [f"P{i:05d}" for i in range(90)]
    np.save(tmp_path / "e.npy", rng.normal(size=(90, 8)).astype(np.float32))
    (tmp_path / "e.ids.txt").write_text("".join(i + "\n" for i in ids))
    (tmp_path / "e.meta.json").write_text(json.dumps({"model": "m"}))
    (tmp_path / "l.tsv").write_text("id\tlocation\n" + "".join(
        f"{p}\t{['Nucleus', 'Cytoplasm', 'Membrane'][k % 3]}\n" for k, p in enumerate(ids)))
    assert main(["map", str(tmp_path / "e.npy"), "-o", str(tmp_path / "m.html"), "--labels",
                 str(tmp_path / "l.tsv"), "--color", "location"]) == 0
    capsys.readouterr()
    page = (tmp_path / "m.html").read_text()
    (tmp_path / "probe.html").write_text(page.replace("</body>", PROBE))
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--dump-dom", (tmp_path / "probe.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    probe = out.split('data-probe="')[1].split('"')[0]
    # Point 5's label is Membrane (5 % 3 == 2); the legend is sorted: Cytoplasm, Membrane, ...
    tip, display, shown, hidden = probe.split("|")
    assert tip == "P00005 · Membrane" and display == "block"
    assert (shown, hidden) == ("90", "30")  # the second class (Membrane, 30 proteins) hidden
