"""``python -m amylm_jax.report``: see :mod:`amylm_jax.report.command`."""

import sys

from amylm_jax.report.command import main

if __name__ == "__main__":
    sys.exit(main())
