"""Backbone registry and the EDM denoiser built from a backbone."""

from typing import Callable, Optional

import flax.linen as nn
import jax
import ml_collections

from fkdiff.diffusion import edm
from fkdiff.models.mlp import MLP
from fkdiff.models.unet import UNet

Array = jax.Array

_BACKBONES = {"mlp": MLP, "unet": UNet}


def _frozen(value):
  """Lists (e.g. from a ``config.json``) as tuples: module attributes must be hashable."""
  return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def get_backbone(model_config: ml_collections.ConfigDict) -> nn.Module:
  """Instantiates the backbone named ``model_config.name``.

  Its constructor gets every plain (non-section) field of ``model_config`` except ``name`` (the
  shared fields ``width``, ``depth``, ``emb_dim``, ``num_classes``) plus the fields of the
  sub-section named after the backbone, if any (e.g. ``model.unet.channel_mult``). Sections of
  other backbones are their settings only and are not passed.
  """
  name, kwargs = backbone_kwargs(model_config)
  return _BACKBONES[name](**kwargs)


def backbone_kwargs(model_config: ml_collections.ConfigDict):
  """``(name, kwargs)`` that :func:`get_backbone` builds: two configs with equal results have the
  same architecture (sequences as tuples, other backbones' sections left out)."""
  name = model_config.name
  if name not in _BACKBONES:
    raise ValueError(f"Unknown model.name {name!r}; choose one of {sorted(_BACKBONES)}.")
  is_section = lambda v: isinstance(v, (dict, ml_collections.ConfigDict))
  kwargs = {k: _frozen(v) for k, v in model_config.items() if k != "name" and not is_section(v)}
  if is_section(model_config.get(name)):
    kwargs.update({k: _frozen(v) for k, v in model_config[name].items()})
  return name, kwargs


def make_denoiser(backbone: nn.Module, sigma_data: float) -> Callable:
  """EDM denoiser ``denoise_fn(params, x, σ, label=None) -> D(x, σ)`` for one example."""

  def denoise_fn(params, x: Array, sigma: Array, label: Optional[Array] = None) -> Array:
    net = lambda y, c_noise: backbone.apply(params, y, c_noise, label)
    return edm.edm_denoiser(net, x, sigma, sigma_data)

  return denoise_fn
