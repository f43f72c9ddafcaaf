"""PyTorch re-statements of the original system, for the parity tests and the benchmarks.

Nothing in the training system imports this package; it needs PyTorch and the ``moshi``
package (``pip install torch==2.13.0`` and ``pip install --no-deps moshi==0.2.13 sentencepiece
sphn einops``, as ``scripts/test.sh`` does).

* :mod:`~amylm_jax.reference.mimi`: moshi's Mimi with random weights, configured like a
  :class:`~amylm_jax.config.CodecConfig` (Kyutai's key layout);
* :mod:`~amylm_jax.reference.torch_losses`: the MS-STFT discriminator, STFT / mel / msspec and
  the hinge / feature-matching losses, written in PyTorch from docs/original.md §5-§6;
* :mod:`~amylm_jax.reference.torch_step`: the original training step re-stated in PyTorch
  (four discriminator forwards, two Adam optimizers), with state conversion to and from JAX;
* :mod:`~amylm_jax.reference.jax_setup`: the matching JAX set-up (random codebooks, random
  batches) shared by the fidelity test and the throughput benchmark.
"""
