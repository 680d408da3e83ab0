"""Residual MLP backbone for low-dimensional data (the free network ``F`` / energy's ``h``)."""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def fourier_embedding(c_noise: Array, dim: int, max_period: float = 1e4) -> Array:
  """Sinusoidal embedding of the noise condition; ``c_noise`` is ``(...)``, returns ``(..., dim)``."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  # c_noise = ln(σ)/4 is O(1); scale so the lowest frequency still resolves it.
  angles = 100.0 * jnp.asarray(c_noise, jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class ResidualBlock(nn.Module):
  """Pre-norm residual block ``x + W₂ σ(W₁ LN(x) + emb)``."""
  width: int

  @nn.compact
  def __call__(self, h: Array, emb: Array) -> Array:
    z = nn.LayerNorm()(h)
    z = nn.Dense(self.width)(z) + nn.Dense(self.width)(emb)
    z = nn.Dense(self.width)(nn.silu(z))
    return h + z


class MLP(nn.Module):
  """Residual MLP ``F(y, c_noise[, label]) -> (..., d)`` with noise (and label) embedding.

  Attributes:
    width: hidden width.
    depth: number of residual blocks.
    emb_dim: noise-embedding size.
    num_classes: if > 0, labels in ``[0, num_classes]`` are embedded; ``num_classes`` itself is
      the null label used for classifier-free dropout.
    zero_init_output: start with ``F ≡ 0`` (the EDM denoiser then starts as ``c_skip x``).
    output_heads: the last layer outputs ``output_heads · d`` numbers, one event per head,
      concatenated on the last axis (:class:`fkdiff.models.TwoHeadModel`: 2); the rest is shared.
  """
  width: int = 128
  depth: int = 3
  emb_dim: int = 64
  num_classes: int = 0
  zero_init_output: bool = True
  output_heads: int = 1

  @nn.compact
  def __call__(self, y: Array, c_noise: Array, label: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    """``y``: ``(..., d)``; ``c_noise``: ``(...)`` or scalar; ``label``: ``(...)`` ints or None.

    ``deterministic`` is the backbones' common dropout switch (see :class:`fkdiff.models.UNet`);
    the MLP has no dropout, so its output is the same either way.
    """
    del deterministic
    emb = fourier_embedding(jnp.broadcast_to(c_noise, y.shape[:-1]), self.emb_dim)
    emb = nn.Dense(self.width)(nn.silu(nn.Dense(self.width)(emb)))
    if self.num_classes > 0:
      if label is None:
        label = jnp.full(y.shape[:-1], self.num_classes, jnp.int32)
      emb = emb + nn.Embed(self.num_classes + 1, self.width)(jnp.asarray(label, jnp.int32))
    elif label is not None:
      raise ValueError("a label was passed to an unconditional network (num_classes = 0): it "
                       "would be ignored. Pass label=None, or train a conditional model "
                       "(model.num_classes > 0).")
    emb = nn.silu(emb)
    h = nn.Dense(self.width)(y)
    for _ in range(self.depth):
      h = ResidualBlock(self.width)(h, emb)
    h = nn.silu(nn.LayerNorm()(h))
    init = nn.initializers.zeros if self.zero_init_output else nn.initializers.lecun_normal()
    return nn.Dense(self.output_heads * y.shape[-1], kernel_init=init)(h)
