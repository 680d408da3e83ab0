"""fkdiff: energy-parameterised diffusion models, distillation, and Feynman–Kac SMC in JAX.

Layers (each talks to the next through per-example callables):
``diffusion`` (EDM conventions) → ``models`` (backbones, energies) → ``losses`` (DSM,
distillation) → ``training`` (``train_and_evaluate``) → ``sampling`` (samplers, SMC, targets) →
``evaluation`` (metrics, figures). ``data`` holds exact toy densities and datasets.

A finished run loads with ``fkdiff.load_energy(workdir)`` / ``fkdiff.load_teacher(workdir)``
(:mod:`fkdiff.runs`), imported on first use so that ``import fkdiff`` stays light.
"""

__version__ = "0.1.0"


def __getattr__(name):
  if name in ("load_energy", "load_teacher"):
    from fkdiff import runs
    return getattr(runs, name)
  raise AttributeError(f"module 'fkdiff' has no attribute {name!r}")
