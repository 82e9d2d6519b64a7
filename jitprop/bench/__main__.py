"""``python -m jitprop.bench``: see :mod:`jitprop.bench.cli`."""

import sys

from .cli import main

sys.exit(main())
