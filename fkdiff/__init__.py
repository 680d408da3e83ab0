"""fkdiff: energy-parameterised diffusion models, distillation, and Feynman–Kac SMC in JAX.

Layers, lowest first (:data:`LAYERS`; a module imports only from its own layer and lower ones,
which ``tests/test_layers.py`` checks, with no import cycle): ``diffusion`` (EDM conventions),
``data`` (exact toy densities, datasets), ``models`` (backbones, energies), ``losses`` (DSM,
distillation), ``sampling`` (samplers, SMC, targets), ``evaluation`` (metrics, figures),
``training`` (``train_and_evaluate``, checkpoints, the run loader), ``experiments`` (the jobs).
They talk through per-example callables: an energy ``E(x, σ)``, a denoiser ``D(x, σ)``.

A finished run loads with ``fkdiff.load_energy(workdir)`` / ``fkdiff.load_teacher(workdir)`` /
``fkdiff.load_heads(workdir)`` (a two-headed run; :mod:`fkdiff.training.runs`), imported on first use so that ``import fkdiff`` stays light.
"""

__version__ = "0.1.0"

LAYERS = ("diffusion", "data", "models", "losses", "sampling", "evaluation", "training",
          "experiments")


def __getattr__(name):
  if name in ("load_energy", "load_teacher", "load_heads"):
    from fkdiff.training import runs
    return getattr(runs, name)
  raise AttributeError(f"module 'fkdiff' has no attribute {name!r}")
