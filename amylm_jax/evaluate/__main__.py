"""``python -m amylm_jax.evaluate``: see :mod:`amylm_jax.evaluate.run`."""

import sys

from amylm_jax.evaluate.run import main

if __name__ == "__main__":
    sys.exit(main())
