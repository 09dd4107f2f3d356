"""Students shipped with the package (float16, a few MB each), usable by name wherever a
model is asked for (``--model mtdp-unirep``): each a student directory here with its model
card (README.md) and licence note. ``mtdp-unirep`` is ``mtdp embed``'s default model."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The shipped students by name.
SHIPPED = ("mtdp-unirep",)
DEFAULT_MODEL = "mtdp-unirep"


def shipped_path(name: str) -> Path:
    """The directory of the shipped student ``name``.

    Raises:
        FileNotFoundError: the package was installed without it (a broken install).
    """
    d = HERE / name
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"the shipped student {name!r} is missing from {d}: reinstall "
                                "mtdp (pip install -e .) or give a student directory")
    return d
