"""``python -m amylm_jax.export --workdir=DIR --out=FILE.safetensors [--layout=...]``.

Thin entry point; see :mod:`amylm_jax.export.to_torch`.
"""

import sys

from amylm_jax.export.to_torch import main

if __name__ == "__main__":
    sys.exit(main())
