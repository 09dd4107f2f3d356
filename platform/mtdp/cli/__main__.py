"""``python -m mtdp.cli``: the same as the ``mtdp`` console script."""
import sys

from . import main

sys.exit(main())
