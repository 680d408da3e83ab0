"""clu metric collections for the train step, including per-σ-bin averages."""

from typing import Sequence

import jax
import jax.numpy as jnp
from clu import metrics


def _bin_average(key: str, lo: float, hi: float):
  def fun(sigma, **aux):
    return {"values": aux[key], "mask": (sigma >= lo) & (sigma < hi)}
  return metrics.Average.from_fun(fun)


def sigma_bin_names(edges: Sequence[float]):
  """``[(lo, hi, suffix)]`` for the bins ``[0, e₀), [e₀, e₁), …, [e_last, ∞)``."""
  bounds = [0.0, *edges, float("inf")]
  return [(lo, hi, f"s{i}") for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]


def make_metrics_class(per_example_keys: Sequence[str], edges: Sequence[float]):
  """A ``clu.metrics.Collection`` with ``loss``, ``grad_norm`` and per-σ-bin averages.

  ``per_example_keys`` are the ``aux`` entries of the loss (besides ``sigma``) to bin; each gets
  fields ``<key>_s<i>`` for the bins of :func:`sigma_bin_names`.
  """
  fields = {"loss": metrics.Average.from_output("loss"),
            "grad_norm": metrics.Average.from_output("grad_norm")}
  for key in per_example_keys:
    for lo, hi, suffix in sigma_bin_names(edges):
      fields[f"{key}_{suffix}"] = _bin_average(f"aux_{key}", lo, hi)
  return metrics.Collection.create(**fields)


def readable(computed: dict, per_example_keys: Sequence[str], edges: Sequence[float]) -> dict:
  """Renames ``<key>_s<i>`` to ``<key>/sigma_<lo>-<hi>`` for the logs; drops empty bins."""
  out = {}
  names = {f"{k}_{s}": f"{k}/sigma_{lo:g}-{hi:g}" for k in per_example_keys
           for lo, hi, s in sigma_bin_names(edges)}
  for name, value in computed.items():
    value = float(value)
    if name in names:
      if jnp.isnan(value):   # no example fell into this bin since the last log.
        continue
      name = names[name]
    out[name] = value
  return out
