"""diffusers' ``UNet2DModel`` in Flax, for DDPM-style checkpoints, and its weight layout.

The network computes what diffusers' does (the same operations in the same order, float32), on
NHWC arrays: ``UNet2DModel(config)(sample (B, H, W, C), timesteps (B,) or (), class_labels)``.
Its submodules carry diffusers' names (``down_blocks_0/resnets_1/conv1``), so a checkpoint's
tensor ``down_blocks.0.resnets.1.conv1.weight`` is the parameter ``down_blocks_0/resnets_1/conv1/
kernel`` (:func:`to_state_dict`, :func:`from_state_dict`; convolutions ``(O, I, kh, kw) ↔
(kh, kw, I, O)``, linear layers transposed).

Supported (:class:`UNet2DConfig`; anything else is refused by :func:`UNet2DConfig.from_dict`,
naming the config key and value): blocks ``DownBlock2D``, ``AttnDownBlock2D``, ``UpBlock2D``,
``AttnUpBlock2D`` (also spelt ``UNetRes…``), mid block ``UNetMidBlock2D`` or none (with or without
attention); positional timestep embedding (``Timesteps`` + ``TimestepEmbedding``, any
``flip_sin_to_cos`` / ``freq_shift`` / ``time_embedding_dim``); ``resnet_time_scale_shift``
``default`` or ``scale_shift``; class embeddings ``num_class_embeds`` (``class_embed_type`` null);
``center_input_sample``, ``mid_block_scale_factor``, ``downsample_padding``, ``attention_head_dim``
(null: one head), ``norm_num_groups``, ``attn_norm_num_groups``, ``norm_eps``, ``act_fn`` silu /
swish / mish / gelu / relu. Refused: skip blocks and other block types, Fourier or learned time
embeddings, ``class_embed_type`` timestep / identity, resnet down/upsampling, unknown keys.
Dropout is not applied (the network is used for evaluation).
"""

import dataclasses
import math
import re
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
ACTIVATIONS = {"silu": nn.silu, "swish": nn.silu, "relu": nn.relu,
               "gelu": lambda x: nn.gelu(x, approximate=False),
               "mish": lambda x: x * jnp.tanh(nn.softplus(x))}
# Config keys with no effect on the evaluated network.
_IGNORED_KEYS = ("sample_size", "dropout", "num_train_timesteps")
# Module lists of diffusers (``name.<i>`` in a state dict, ``name_<i>`` here).
_LISTS = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers",
          "to_out")
_LIST_NAME = re.compile(r"^(%s)_(\d+)$" % "|".join(_LISTS))


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be read: bad JSON, an unreadable weights file, tensors that
  do not match the config (the message names what is wrong)."""


class UnsupportedConfigError(ValueError):
  """A ``UNet2DModel`` config this module does not implement (the message names the key)."""


def _refuse(key, value, why=""):
  raise UnsupportedConfigError(f"UNet2DModel config {key}={value!r} is not supported"
                               + (f": {why}" if why else "") + ".")


@dataclasses.dataclass(frozen=True)
class UNet2DConfig:
  """The supported part of a diffusers ``UNet2DModel`` config (defaults are diffusers')."""
  in_channels: int = 3
  out_channels: int = 3
  center_input_sample: bool = False
  time_embedding_dim: Optional[int] = None
  freq_shift: float = 0
  flip_sin_to_cos: bool = True
  down_block_types: Tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                       "AttnDownBlock2D")
  mid_block_type: Optional[str] = "UNetMidBlock2D"
  up_block_types: Tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                     "UpBlock2D")
  block_out_channels: Tuple[int, ...] = (224, 448, 672, 896)
  layers_per_block: int = 2
  mid_block_scale_factor: float = 1.0
  downsample_padding: int = 1
  act_fn: str = "silu"
  attention_head_dim: Optional[int] = 8
  norm_num_groups: int = 32
  attn_norm_num_groups: Optional[int] = None
  norm_eps: float = 1e-5
  resnet_time_scale_shift: str = "default"
  add_attention: bool = True
  num_class_embeds: Optional[int] = None

  @classmethod
  def from_dict(cls, config: dict) -> "UNet2DConfig":
    """Validates a ``config.json`` dict; raises :class:`UnsupportedConfigError` naming the first
    unsupported key (and its value)."""
    name = config.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
      _refuse("_class_name", name, "only UNet2DModel is")
    fields = {f.name for f in dataclasses.fields(cls)}
    fixed = {"time_embedding_type": "positional", "downsample_type": "conv",
             "upsample_type": "conv", "class_embed_type": None}
    kwargs = {}
    for key, value in config.items():
      if key.startswith("_") or key in _IGNORED_KEYS:
        continue
      if key in fixed:
        if value != fixed[key]:
          _refuse(key, value, f"only {fixed[key]!r} is")
      elif key in fields:
        kwargs[key] = tuple(value) if isinstance(value, list) else value
      else:
        _refuse(key, value, "unknown key")
    c = cls(**kwargs)
    c._check()
    return c

  def _check(self):
    strip = lambda b: b[len("UNetRes"):] if b.startswith("UNetRes") else b
    for key, types, allowed in (("down_block_types", self.down_block_types, DOWN_BLOCKS),
                                ("up_block_types", self.up_block_types, UP_BLOCKS)):
      for b in types:
        if strip(b) not in allowed:
          _refuse(key, list(types), f"{b!r} is not one of {', '.join(allowed)}")
    levels = len(self.block_out_channels)
    if not levels or len(self.down_block_types) != levels or len(self.up_block_types) != levels:
      _refuse("block_out_channels", list(self.block_out_channels),
              "need one down and one up block type per entry")
    if self.mid_block_type not in ("UNetMidBlock2D", None):
      _refuse("mid_block_type", self.mid_block_type, "only 'UNetMidBlock2D' or null are")
    if self.resnet_time_scale_shift not in ("default", "scale_shift"):
      _refuse("resnet_time_scale_shift", self.resnet_time_scale_shift,
              "only 'default' and 'scale_shift' are")
    if self.act_fn not in ACTIVATIONS:
      _refuse("act_fn", self.act_fn, f"only {', '.join(ACTIVATIONS)} are")
    if self.num_class_embeds is not None and self.num_class_embeds < 1:
      _refuse("num_class_embeds", self.num_class_embeds)
    if not isinstance(self.norm_num_groups, int) or any(
        c % self.norm_num_groups for c in self.block_out_channels):
      _refuse("norm_num_groups", self.norm_num_groups, "must divide every block_out_channels")
    if self.attention_head_dim is not None and self.attention_head_dim > min(
        self.block_out_channels):
      _refuse("attention_head_dim", self.attention_head_dim,
              "larger than a block's channels (no heads)")

  def to_dict(self) -> dict:
    """The ``config.json`` dict diffusers reads (``_class_name`` included)."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
    return {"_class_name": "UNet2DModel", **d, "time_embedding_type": "positional",
            "downsample_type": "conv", "upsample_type": "conv", "class_embed_type": None}

  @property
  def time_embed_dim(self) -> int:
    return self.time_embedding_dim or 4 * self.block_out_channels[0]

  @property
  def down_attention(self) -> Tuple[bool, ...]:
    return tuple(b.endswith("AttnDownBlock2D") for b in self.down_block_types)

  @property
  def up_attention(self) -> Tuple[bool, ...]:
    return tuple(b.endswith("AttnUpBlock2D") for b in self.up_block_types)


def timestep_embedding(timesteps: Array, dim: int, flip_sin_to_cos: bool,
                       freq_shift: float, max_period: float = 10000.0) -> Array:
  """diffusers' ``get_timestep_embedding``: ``(B,)`` (possibly fractional) → ``(B, dim)``."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  emb = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _conv(features, kernel=3, stride=1, pad=1, name=None):
  padding = ((pad, pad), (pad, pad)) if pad else ((0, 1), (0, 1)) if stride == 2 else "VALID"
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, name=name)


def _group_norm(groups, eps, name):
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


class ResnetBlock2D(nn.Module):
  """diffusers' ``ResnetBlock2D`` (pre-norm, time embedding added or as scale-and-shift)."""
  out_channels: int
  groups: int
  eps: float
  act: str
  scale_shift: bool
  output_scale_factor: float = 1.0

  @nn.compact
  def __call__(self, x: Array, temb: Array) -> Array:
    act = ACTIVATIONS[self.act]
    h = _conv(self.out_channels, name="conv1")(act(_group_norm(self.groups, self.eps, "norm1")(x)))
    temb = nn.Dense(self.out_channels * (2 if self.scale_shift else 1),
                    name="time_emb_proj")(act(temb))[:, None, None, :]
    norm2 = _group_norm(self.groups, self.eps, "norm2")
    if self.scale_shift:
      scale, shift = jnp.split(temb, 2, axis=-1)
      h = norm2(h) * (1 + scale) + shift
    else:
      h = norm2(h + temb)
    h = _conv(self.out_channels, name="conv2")(act(h))
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, kernel=1, pad=0, name="conv_shortcut")(x)
    return (x + h) / self.output_scale_factor


class Attention(nn.Module):
  """diffusers' spatial self-``Attention`` of a UNet block (residual, optional GroupNorm)."""
  heads: int
  head_dim: int
  groups: Optional[int]
  eps: float
  rescale_output_factor: float = 1.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, height, width, c = x.shape
    h = x.reshape(b, height * width, c)
    if self.groups is not None:
      h = _group_norm(self.groups, self.eps, "group_norm")(h)
    inner = self.heads * self.head_dim
    split = lambda t: t.reshape(b, height * width, self.heads, self.head_dim)
    q, k, v = (split(nn.Dense(inner, name=n)(h)) for n in ("to_q", "to_k", "to_v"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
    out = nn.Dense(c, name="to_out_0")(out.reshape(b, height * width, inner))
    return (out.reshape(b, height, width, c) + x) / self.rescale_output_factor


class _Downsample(nn.Module):
  """``Downsample2D`` with a conv: stride 2, 3×3 (``padding`` 0: pad right and bottom by 1)."""
  channels: int
  padding: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _conv(self.channels, stride=2, pad=self.padding, name="conv")(x)


class _Upsample(nn.Module):
  """``Upsample2D`` with a conv: nearest-neighbour 2× then a 3×3 conv."""
  channels: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.channels, name="conv")(x)


class _Block(nn.Module):
  """One down or up block (``DownBlock2D`` / ``AttnDownBlock2D`` / ``UpBlock2D`` /
  ``AttnUpBlock2D``): resnets, each followed by attention in the ``Attn`` kinds, then a
  resampling conv. An up block first concatenates the skip it consumes (``(x, skip)``, channels
  last, as diffusers on dim 1)."""
  config: UNet2DConfig
  channels: int
  num_layers: int
  attention: bool
  resample: Optional[str]        # 'down' | 'up' | None.

  @nn.compact
  def __call__(self, h: Array, emb: Array, skips: Optional[tuple] = None):
    """Returns ``(h, outputs)``: a down block's outputs are the skips it produces (one per layer
    and its downsampling); an up block consumes ``skips`` (one per layer), last first."""
    skips = None if skips is None else list(skips)
    c = self.config
    shift = c.resnet_time_scale_shift == "scale_shift"
    heads, head_dim = _heads(c, self.channels)
    outputs = []
    for j in range(self.num_layers):
      if skips is not None:
        h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = ResnetBlock2D(self.channels, c.norm_num_groups, c.norm_eps, c.act_fn, shift,
                        name=f"resnets_{j}")(h, emb)
      if self.attention:
        h = Attention(heads, head_dim, c.norm_num_groups, c.norm_eps, name=f"attentions_{j}")(h)
      outputs.append(h)
    if self.resample == "down":
      h = _Downsample(self.channels, c.downsample_padding, name="downsamplers_0")(h)
      outputs.append(h)
    elif self.resample == "up":
      h = _Upsample(self.channels, name="upsamplers_0")(h)
    return h, outputs


class _MidBlock(nn.Module):
  """``UNetMidBlock2D``: resnet, (attention), resnet, every sum scaled by
  ``1/mid_block_scale_factor``."""
  config: UNet2DConfig

  @nn.compact
  def __call__(self, h: Array, emb: Array) -> Array:
    c = self.config
    channels = c.block_out_channels[-1]
    shift = c.resnet_time_scale_shift == "scale_shift"
    groups = c.attn_norm_num_groups
    if groups is None and not shift:
      groups = c.norm_num_groups        # diffusers: no attention GroupNorm under scale_shift.
    res = lambda j: ResnetBlock2D(channels, c.norm_num_groups, c.norm_eps, c.act_fn, shift,
                                  c.mid_block_scale_factor, name=f"resnets_{j}")
    h = res(0)(h, emb)
    if c.add_attention:
      h = Attention(*_heads(c, channels), groups, c.norm_eps, c.mid_block_scale_factor,
                    name="attentions_0")(h)
    return res(1)(h, emb)


def _heads(config: UNet2DConfig, channels: int):
  """``(heads, head_dim)`` of an attention over ``channels`` (head_dim null: one head)."""
  dim = config.attention_head_dim or channels
  return channels // dim, dim


class _TimestepEmbedding(nn.Module):
  """diffusers' ``TimestepEmbedding``: ``linear_2(silu(linear_1(e)))``."""
  features: int

  @nn.compact
  def __call__(self, emb: Array) -> Array:
    return nn.Dense(self.features, name="linear_2")(
        nn.silu(nn.Dense(self.features, name="linear_1")(emb)))


class UNet2DModel(nn.Module):
  """diffusers' ``UNet2DModel`` (see the module docstring): the network ``ε̂ / v̂ / x̂_0`` of a
  DDPM-style checkpoint, on NHWC inputs."""
  config: UNet2DConfig

  def __call__(self, sample: Array, timesteps: Array,
               class_labels: Optional[Array] = None) -> Array:
    """The network's output (:meth:`network`)."""
    return self.network(sample, timesteps, class_labels)

  @nn.compact
  def network(self, sample: Array, timesteps: Array,
              class_labels: Optional[Array] = None) -> Array:
    """Args:
      sample: ``(B, H, W, in_channels)``.
      timesteps: ``()`` or ``(B,)``, integer or fractional diffusers timesteps.
      class_labels: ``(B,)`` ints in ``[0, num_class_embeds)``; required iff the config has
        ``num_class_embeds``.
    Returns:
      ``(B, H, W, out_channels)``, the network's output.
    """
    c = self.config
    levels = len(c.block_out_channels)
    if sample.ndim != 4 or sample.shape[-1] != c.in_channels or any(
        s % 2**(levels - 1) for s in sample.shape[1:3]):
      raise ValueError(f"UNet2DModel expects (B, H, W, {c.in_channels}) inputs with H and W "
                       f"divisible by {2**(levels - 1)}; got shape {sample.shape}.")
    if c.center_input_sample:
      sample = 2 * sample - 1.0
    batch = sample.shape[0]
    t = jnp.broadcast_to(jnp.reshape(jnp.asarray(timesteps, jnp.float32), (-1,)), (batch,))
    emb = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
    emb = _TimestepEmbedding(c.time_embed_dim, name="time_embedding")(emb)
    if c.num_class_embeds is not None:
      if class_labels is None:
        raise ValueError("this UNet2DModel is class-conditional (num_class_embeds="
                         f"{c.num_class_embeds}): pass class labels.")
      labels = jnp.broadcast_to(jnp.reshape(jnp.asarray(class_labels, jnp.int32), (-1,)),
                                (batch,))
      emb = emb + nn.Embed(c.num_class_embeds, c.time_embed_dim, name="class_embedding")(labels)
    elif class_labels is not None:
      raise ValueError("a class label was passed to an unconditional UNet2DModel "
                       "(num_class_embeds is null).")

    h = _conv(c.block_out_channels[0], name="conv_in")(sample)
    skips = [h]
    for i, (channels, attention) in enumerate(zip(c.block_out_channels, c.down_attention)):
      h, outputs = _Block(c, channels, c.layers_per_block, attention,
                          "down" if i < levels - 1 else None, name=f"down_blocks_{i}")(h, emb)
      skips += outputs
    if c.mid_block_type is not None:
      h = _MidBlock(c, name="mid_block")(h, emb)
    for i, (channels, attention) in enumerate(zip(reversed(c.block_out_channels),
                                                  c.up_attention)):
      n = c.layers_per_block + 1
      skips, consumed = skips[:-n], tuple(skips[-n:])
      h, _ = _Block(c, channels, n, attention, "up" if i < levels - 1 else None,
                    name=f"up_blocks_{i}")(h, emb, consumed)
    h = ACTIVATIONS["silu"](_group_norm(c.norm_num_groups, c.norm_eps, "conv_norm_out")(h))
    return _conv(c.out_channels, name="conv_out")(h)


# ------------------------------------------------------------------------- the weights' layout

def torch_key(path: Tuple[str, ...]) -> str:
  """The state-dict key of a parameter path: ``('down_blocks_0', 'resnets_1', 'conv1',
  'kernel')`` → ``'down_blocks.0.resnets.1.conv1.weight'``."""
  parts = [_LIST_NAME.sub(r"\1.\2", p) for p in path[:-1]]
  return ".".join(parts + ["bias" if path[-1] == "bias" else "weight"])


def _to_torch(leaf_name: str, value: np.ndarray) -> np.ndarray:
  if leaf_name == "kernel" and value.ndim == 4:
    return np.transpose(value, (3, 2, 0, 1))         # (kh, kw, I, O) → (O, I, kh, kw)
  if leaf_name == "kernel":
    return np.transpose(value)                        # (I, O) → (O, I)
  return value


def _from_torch(leaf_name: str, value: np.ndarray) -> np.ndarray:
  if leaf_name == "kernel" and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if leaf_name == "kernel":
    return np.transpose(value)
  return value


def _flat(params) -> dict:
  return {tuple(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def to_state_dict(params) -> dict:
  """``{state-dict key: float32 array}`` in diffusers' (PyTorch) layout, from ``{'params': …}``."""
  return {torch_key(path): np.ascontiguousarray(_to_torch(path[-1], np.asarray(v, np.float32)))
          for path, v in _flat(params["params"]).items()}


# Attention names of checkpoints saved before diffusers 0.14 (it renames them on load too).
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _renamed(key: str) -> str:
  parts = key.split(".")
  if len(parts) >= 3 and parts[-2] in _OLD_ATTENTION and "attentions" in parts:
    return ".".join(parts[:-2] + [_OLD_ATTENTION[parts[-2]], parts[-1]])
  return key


def from_state_dict(config: UNet2DConfig, state: dict):
  """``{'params': …}`` of :class:`UNet2DModel` ``config`` from a state dict (float32).

  Raises :class:`CheckpointError` naming the missing, unexpected and mis-shaped tensors.
  """
  state = {_renamed(k): v for k, v in state.items()}
  template = _flat(abstract_params(config)["params"])
  expected = {torch_key(path): (path, leaf.shape) for path, leaf in template.items()}
  problems = [f"missing tensor {k}" for k in expected if k not in state]
  problems += [f"unexpected tensor {k}" for k in state if k not in expected]
  flat = {}
  for key, (path, shape) in expected.items():
    if key not in state:
      continue
    value = _from_torch(path[-1], np.asarray(state[key]))
    if value.shape != shape:
      problems.append(f"tensor {key} has shape {tuple(np.shape(state[key]))}, expected "
                      f"{tuple(_to_torch(path[-1], np.zeros(shape)).shape)}")
    flat[path] = value.astype(np.float32)
  if problems:
    shown = "; ".join(problems[:4]) + (f" … ({len(problems)} in all)" if len(problems) > 4 else "")
    raise CheckpointError(f"the weights do not fit the config: {shown}.")
  tree = {}
  for path, value in flat.items():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(value)
  return {"params": tree}


def abstract_params(config: UNet2DConfig):
  """The parameter tree of :class:`UNet2DModel` ``config`` as ``jax.ShapeDtypeStruct`` leaves."""
  x, t, label = _example_inputs(config)
  return jax.eval_shape(UNet2DModel(config).init, jax.random.key(0), x, t, label)


def init_params(config: UNet2DConfig, key: Array):
  """Random ``{'params': …}`` of :class:`UNet2DModel` ``config`` (Flax's default initialisers)."""
  return UNet2DModel(config).init(key, *_example_inputs(config))


def _example_inputs(config: UNet2DConfig):
  side = 2**(len(config.block_out_channels) - 1)
  label = None if config.num_class_embeds is None else jnp.zeros((1,), jnp.int32)
  return jnp.zeros((1, side, side, config.in_channels)), jnp.zeros((1,)), label
