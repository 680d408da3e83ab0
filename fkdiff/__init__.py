"""fkdiff: energy-parameterised diffusion models, distillation, and Feynman–Kac SMC in JAX.

Layers (each talks to the next through per-example callables):
``diffusion`` (EDM conventions) → ``models`` (backbones, energies) → ``losses`` (DSM,
distillation) → ``training`` (``train_and_evaluate``) → ``sampling`` (samplers, SMC, targets) →
``evaluation`` (metrics, figures). ``data`` holds exact toy densities and datasets.
"""

__version__ = "0.1.0"
