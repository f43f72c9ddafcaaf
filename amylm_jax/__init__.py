"""amylm_jax: JAX/Flax training system for the Amy codec."""

__version__ = "0.1.0"
