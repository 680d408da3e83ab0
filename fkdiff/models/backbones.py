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
  if name == "diffusers":
    raise ValueError("model.name 'diffusers' is the network of an imported checkpoint: it is the "
                     "student of a distillation with teacher.diffusers set (a teacher run cannot "
                     "train it).")
  if name not in _BACKBONES:
    raise ValueError(f"Unknown model.name {name!r}; choose one of {sorted(_BACKBONES)}.")
  is_section = lambda v: isinstance(v, (dict, ml_collections.ConfigDict))
  kwargs = {k: _frozen(v) for k, v in model_config.items() if k != "name" and not is_section(v)}
  if is_section(model_config.get(name)):
    kwargs.update({k: _frozen(v) for k, v in model_config[name].items()})
  return name, kwargs


def apply_backbone(backbone: nn.Module, params, y: Array, c_noise: Array,
                   label: Optional[Array] = None, dropout_key: Optional[Array] = None) -> Array:
  """``backbone.apply(params, y, c_noise, label)``; with a ``dropout_key``, the training call
  ``deterministic=False, rngs={'dropout': dropout_key}`` (dropout as the backbone's rate sets)."""
  if dropout_key is None:
    return backbone.apply(params, y, c_noise, label)
  return backbone.apply(params, y, c_noise, label, deterministic=False,
                        rngs={"dropout": dropout_key})


def make_denoiser(backbone: nn.Module, sigma_data: float) -> Callable:
  """EDM denoiser ``denoise_fn(params, x, σ, label=None, dropout_key=None) -> D(x, σ)`` for one
  example.

  Deterministic unless a ``dropout_key`` is given (training losses only): then the backbone's
  dropout (``model.unet.dropout``) is applied with masks drawn from that key.
  """

  def denoise_fn(params, x: Array, sigma: Array, label: Optional[Array] = None,
                 dropout_key: Optional[Array] = None) -> Array:
    net = lambda y, c_noise: apply_backbone(backbone, params, y, c_noise, label, dropout_key)
    return edm.edm_denoiser(net, x, sigma, sigma_data)

  return denoise_fn
