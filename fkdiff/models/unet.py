"""DDPM++/EDM-style U-Net backbone for images (the free network ``F`` / the energy's ``h``).

Same call as :class:`fkdiff.models.mlp.MLP`: ``UNet(...)(y, c_noise, label=None) -> like y``,
for one example ``y (H, W, C)`` (what :class:`fkdiff.models.energy.EnergyModel` and the vmapped
losses pass) or a batch ``y (B, H, W, C)``. Every normalisation is per example (GroupNorm), so the
batched call equals the vmapped per-example one, and every operation is smooth enough for the
second-order autodiff of energy training (``∇_θ ∇_x E``).

Layout (Song et al. 2021 DDPM++, as in Karras et al. 2022): a 3×3 input conv, then per
resolution level ``i`` ``depth`` residual blocks with ``width · channel_mult[i]`` channels
(self-attention after each block at the resolutions in ``attn_resolutions``) and a stride-2
downsampling conv; a middle block (res, attention, res); the mirror-image decoder with
``depth + 1`` blocks per level that consume the encoder's skip activations, nearest-neighbour
upsampling + conv; GroupNorm, SiLU and a zero-initialised 3×3 output conv (so ``F ≡ 0`` at
initialisation, like the MLP). Residual sums are scaled by ``1/√2``.

Dropout (``dropout`` = rate, EDM/DDPM++): inside every residual block, after the second
GroupNorm + SiLU and before the second conv (EDM: 0.13 on CIFAR-10, 0.05 on FFHQ-64, 0.25 on
AFHQv2-64, 0.10 on ImageNet-64); none in the attention blocks. It is applied only when the call says
``deterministic=False`` and supplies a ``'dropout'`` PRNG key (``apply(..., deterministic=False,
rngs={'dropout': key})``: training losses); the default call is deterministic, the network used
for sampling and evaluation. Dropout has no parameters: the parameter tree is the same whatever
the rate, and with ``deterministic=True`` (or rate 0) the output is exactly that of rate 0.

Conditioning (the embedding added in every residual block):
- noise: sinusoidal embedding of ``c_noise`` (:func:`fkdiff.models.mlp.fourier_embedding`) → MLP;
- a class label ``(,)`` int in ``[0, num_classes]`` (``num_classes > 0``); ``num_classes`` is the
  null token ∅ (classifier-free dropout; ``label=None`` means ∅);
- or multi-label attributes ``(num_attributes,)`` ints, each ``0`` (absent), ``1`` (present) or
  ``2`` (:data:`NULL_ATTRIBUTE`, unspecified). Each (attribute, value) pair has its own learned
  embedding and they are summed, so an attribute left at ∅ contributes the same constant whatever
  the others are: ``E(x | male)`` is the label with every other attribute at ∅, and all-∅ (or
  ``label=None``) is the unconditional model.
"""

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fkdiff.models.mlp import fourier_embedding

Array = jax.Array
NULL_ATTRIBUTE = 2            # the "unspecified" value of one attribute.
_SKIP_SCALE = 2.0 ** -0.5     # DDPM++ scales every residual sum by 1/√2.


def null_label(num_classes: int = 0, num_attributes: int = 0, batch_shape=()) -> Array:
  """The null condition ∅ of a backbone: ``num_classes`` (class) or all :data:`NULL_ATTRIBUTE`.

  Returns ``batch_shape`` ints (class labels) or ``(*batch_shape, num_attributes)`` ints.
  """
  if num_attributes > 0:
    return jnp.full(tuple(batch_shape) + (num_attributes,), NULL_ATTRIBUTE, jnp.int32)
  return jnp.full(tuple(batch_shape), num_classes, jnp.int32)


def _groups(channels: int) -> int:
  """GroupNorm groups as in EDM: ``min(32, C // 4)`` (at least 1), dividing ``C``."""
  g = max(1, min(32, channels // 4))
  while channels % g:
    g -= 1
  return g


def _init(zero: bool):
  return nn.initializers.zeros if zero else nn.initializers.lecun_normal()


def _norm(channels: int) -> nn.Module:
  return nn.GroupNorm(num_groups=_groups(channels), epsilon=1e-6)


class ResBlock(nn.Module):
  """``(x + conv(drop(silu(GN(conv(silu(GN x)) + Dense(emb)))))) / √2``, 1×1 skip conv if C
  changes; ``drop`` is dropout at rate ``dropout`` unless ``deterministic`` (EDM's position)."""
  channels: int
  zero_init: bool = True   # last conv starts at 0: the block starts as the identity (skip).
  dropout: float = 0.0
  # An attribute, not a call argument: static under nn.remat (jax.checkpoint traces call args).
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, emb: Array) -> Array:
    """``x``: ``(B, H, W, C_in)``; ``emb``: ``(B, E)``; returns ``(B, H, W, channels)``."""
    h = nn.Conv(self.channels, (3, 3))(nn.silu(_norm(x.shape[-1])(x)))
    h = h + nn.Dense(self.channels)(emb)[:, None, None, :]
    h = nn.silu(_norm(self.channels)(h))
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)   # rate 0: h unchanged.
    h = nn.Conv(self.channels, (3, 3), kernel_init=_init(self.zero_init))(h)
    if x.shape[-1] != self.channels:
      x = nn.Conv(self.channels, (1, 1))(x)
    return (x + h) * _SKIP_SCALE


class AttentionBlock(nn.Module):
  """Multi-head self-attention over the ``H·W`` positions, residual and scaled by ``1/√2``."""
  num_heads: int = 1
  zero_init: bool = True   # output projection starts at 0: the block starts as the identity.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``x``: ``(B, H, W, C)``; returns the same shape."""
    b, height, width, c = x.shape
    heads = self.num_heads if c % self.num_heads == 0 else 1
    qkv = nn.Dense(3 * c)(_norm(c)(x)).reshape(b, height * width, 3, heads, c // heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(c // heads).astype(x.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
    out = nn.Dense(c, kernel_init=_init(self.zero_init))(out.reshape(b, height, width, c))
    return (x + out) * _SKIP_SCALE


class UNet(nn.Module):
  """DDPM++-style U-Net ``F(y, c_noise[, label]) -> like y`` (see the module docstring).

  Attributes:
    width: base channel count ``C`` (EDM CIFAR-10: 128).
    depth: residual blocks per resolution level in the encoder (decoder: ``depth + 1``).
    emb_dim: size of the sinusoidal noise embedding (the conditioning MLP has ``4 C`` units).
    num_classes: if > 0, class labels in ``[0, num_classes]`` are embedded; ``num_classes`` is ∅.
    channel_mult: channels of level ``i`` are ``C · channel_mult[i]``; ``len`` levels, each but the
      last followed by a 2× downsampling (the image side must be divisible by ``2^(levels−1)``).
    attn_resolutions: spatial sides (e.g. ``(16,)``) at which self-attention follows each block.
    num_heads: attention heads (falls back to 1 where the channels do not divide).
    num_attributes: if > 0, labels are ``(num_attributes,)`` attribute vectors in ``{0, 1, 2}``
      (``2`` = unspecified) instead of class labels.
    remat_blocks: ``jax.checkpoint`` every residual/attention block (less memory for the
      second-order autodiff of energy training, one more forward pass; same values).
    zero_init_output: start with ``F ≡ 0``.
    zero_init_residual: start every residual/attention branch at 0 (DDPM++); ``False`` gives a
      random network whose output depends on the noise level and label (for tests).
    dropout: dropout rate in every residual block (EDM's position, see the module docstring),
      in ``[0, 1)``; applied only in ``deterministic=False`` calls.
    output_heads: the output convolution gives ``output_heads · C_in`` channels, one image per
      head, concatenated on the channel axis (:class:`fkdiff.models.TwoHeadModel`: 2).
  """
  width: int = 64
  depth: int = 2
  emb_dim: int = 64
  num_classes: int = 0
  channel_mult: Sequence[int] = (1, 2, 2)
  attn_resolutions: Sequence[int] = (16,)
  num_heads: int = 1
  num_attributes: int = 0
  remat_blocks: bool = False
  zero_init_output: bool = True
  zero_init_residual: bool = True
  dropout: float = 0.0
  output_heads: int = 1

  def _embedding(self, c_noise: Array, label: Optional[Array], batch: int) -> Array:
    """The ``(B, 4C)`` conditioning embedding of the noise level and the label."""
    units = 4 * self.width
    emb = fourier_embedding(jnp.broadcast_to(c_noise, (batch,)), self.emb_dim)
    emb = nn.Dense(units)(nn.silu(nn.Dense(units)(emb)))
    if self.num_attributes > 0:
      if label is None:
        label = null_label(num_attributes=self.num_attributes, batch_shape=(batch,))
      label = jnp.broadcast_to(jnp.asarray(label, jnp.int32), (batch, self.num_attributes))
      index = 3 * jnp.arange(self.num_attributes) + label              # (B, A)
      emb = emb + jnp.sum(nn.Embed(3 * self.num_attributes, units)(index), axis=1)
    elif self.num_classes > 0:
      if label is None:
        label = null_label(self.num_classes, batch_shape=(batch,))
      label = jnp.broadcast_to(jnp.asarray(label, jnp.int32), (batch,))
      emb = emb + nn.Embed(self.num_classes + 1, units)(label)
    elif label is not None:
      raise ValueError("a label was passed to an unconditional network (num_classes = "
                       "num_attributes = 0): it would be ignored. Pass label=None, or train a "
                       "conditional model (model.num_classes > 0).")
    return nn.silu(emb)

  @nn.compact
  def __call__(self, y: Array, c_noise: Array, label: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    """Args:
      y: ``(H, W, C)`` (one example) or ``(B, H, W, C)``.
      c_noise: scalar, or ``(B,)`` for a batch.
      label: ``None`` (∅); a class ``()``/``(B,)``; or attributes ``(A,)``/``(B, A)``.
      deterministic: ``False`` applies dropout (if ``dropout > 0``), with masks drawn from the
        ``'dropout'`` PRNG stream that ``apply(..., rngs={'dropout': key})`` must then supply.
    Returns:
      ``F``, shaped like ``y``.
    """
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"UNet dropout must be in [0, 1), got {self.dropout}.")
    single = y.ndim == 3
    if single:
      y = y[None]
      label = None if label is None else jnp.asarray(label)[None]
    if y.ndim != 4:
      raise ValueError(f"UNet expects (H, W, C) or (B, H, W, C) inputs, got shape {y.shape}.")
    levels = len(self.channel_mult)
    factor = 2 ** (levels - 1)
    if y.shape[1] % factor or y.shape[2] % factor:
      raise ValueError(f"Image side {y.shape[1:3]} must be divisible by 2^(levels-1) = {factor} "
                       f"for channel_mult={tuple(self.channel_mult)}.")
    emb = self._embedding(jnp.reshape(c_noise, (-1,)), label, y.shape[0])
    res_cls = functools.partial(nn.remat(ResBlock) if self.remat_blocks else ResBlock,
                                zero_init=self.zero_init_residual, dropout=self.dropout,
                                deterministic=deterministic)
    attn_cls = functools.partial(nn.remat(AttentionBlock) if self.remat_blocks else AttentionBlock,
                                 zero_init=self.zero_init_residual)

    # Blocks are named explicitly: the parameter tree is the same with and without remat.
    h = nn.Conv(self.width, (3, 3), name="conv_in")(y)
    skips = [h]
    for i, mult in enumerate(self.channel_mult):
      for j in range(self.depth):
        h = res_cls(self.width * mult, name=f"enc_{i}_{j}")(h, emb)
        if h.shape[1] in self.attn_resolutions:
          h = attn_cls(self.num_heads, name=f"enc_{i}_{j}_attn")(h)
        skips.append(h)
      if i < levels - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), name=f"down_{i}")(h)
        skips.append(h)

    h = res_cls(h.shape[-1], name="mid_0")(h, emb)
    h = attn_cls(self.num_heads, name="mid_attn")(h)
    h = res_cls(h.shape[-1], name="mid_1")(h, emb)

    for i, mult in reversed(list(enumerate(self.channel_mult))):
      for j in range(self.depth + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_cls(self.width * mult, name=f"dec_{i}_{j}")(h, emb)
        if h.shape[1] in self.attn_resolutions:
          h = attn_cls(self.num_heads, name=f"dec_{i}_{j}_attn")(h)
      if i > 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)     # nearest-neighbour 2× upsampling.
        h = nn.Conv(h.shape[-1], (3, 3), name=f"up_{i}")(h)

    h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]), epsilon=1e-6, name="norm_out")(h))
    out = nn.Conv(self.output_heads * y.shape[-1], (3, 3), kernel_init=_init(self.zero_init_output),
                  name="conv_out")(h)
    return out[0] if single else out
