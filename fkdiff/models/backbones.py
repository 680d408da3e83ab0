"""Backbone registry and the EDM denoiser built from a backbone."""

from typing import Callable, Optional

import flax.linen as nn
import jax
import ml_collections

from fkdiff.diffusion import edm
from fkdiff.models.mlp import MLP

Array = jax.Array

_BACKBONES = {"mlp": MLP}


def get_backbone(model_config: ml_collections.ConfigDict) -> nn.Module:
  """Instantiates the backbone named ``model_config.name`` with the remaining fields."""
  name = model_config.name
  if name not in _BACKBONES:
    raise ValueError(f"Unknown model.name {name!r}; choose one of {sorted(_BACKBONES)}.")
  kwargs = {k: v for k, v in model_config.items() if k != "name"}
  return _BACKBONES[name](**kwargs)


def make_denoiser(backbone: nn.Module, sigma_data: float) -> Callable:
  """EDM denoiser ``denoise_fn(params, x, σ, label=None) -> D(x, σ)`` for one example."""

  def denoise_fn(params, x: Array, sigma: Array, label: Optional[Array] = None) -> Array:
    net = lambda y, c_noise: backbone.apply(params, y, c_noise, label)
    return edm.edm_denoiser(net, x, sigma, sigma_data)

  return denoise_fn
