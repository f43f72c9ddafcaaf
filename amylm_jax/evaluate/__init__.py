"""Evaluation of a training checkpoint: ``python -m amylm_jax.evaluate --workdir=RUN``.

:mod:`~amylm_jax.evaluate.run` holds the evaluation and its command line,
:mod:`~amylm_jax.evaluate.metrics` the metric definitions, :mod:`~amylm_jax.evaluate.output`
the table and TensorBoard output.
"""

from amylm_jax.evaluate.run import (
    EvaluationError,
    Transcriber,
    Variant,
    decode_variants,
    evaluate,
    hf_transcriber,
    main,
)

__all__ = [
    "EvaluationError",
    "Transcriber",
    "Variant",
    "decode_variants",
    "evaluate",
    "hf_transcriber",
    "main",
]
