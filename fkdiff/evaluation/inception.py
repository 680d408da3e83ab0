"""Inception-v3 pool features for FID, in Flax, with the standard FID weights read from a file.

The network is the "FID Inception" of TTUR / pytorch-fid — torchvision's Inception-v3 with the
TensorFlow graph's differences: average pools of the A, C and E blocks exclude the padding from
their count, and the last E block (``Mixed_7c``) pools by max instead of average. Batch norms use
their running statistics (ε = 0.001). ``InceptionV3()(x)`` maps images ``(N, 299, 299, 3)`` in
``[-1, 1]`` to the final average pool ``(N, 2048)``; the classifier head is not built.

**Weights** (nothing is downloaded): the file pytorch-fid uses,
``pt_inception-2015-12-05-6726825d.pth`` from
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(the TensorFlow ``inception-2015-12-05`` graph ported to a PyTorch ``state_dict``), converted once,
on any machine with PyTorch, into a NumPy ``.npz`` with the same keys and array layouts::

  python -c "import torch, numpy as np; sd = torch.load('pt_inception-2015-12-05-6726825d.pth', \\
      map_location='cpu'); np.savez('fid_inception_v3.npz', **{k: v.numpy() for k, v in sd.items()})"

Keys are PyTorch module paths (``Mixed_5b.branch5x5_2.conv.weight`` ``(O, I, kH, kW)``,
``….bn.weight`` / ``bias`` / ``running_mean`` / ``running_var`` ``(O,)``); ``fc.*`` and
``*.num_batches_tracked`` are ignored. :func:`load_fid_weights` reads that file and checks every
key and shape.
"""

import os
from typing import Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
RESOLUTION = 299
FEATURES = 2048
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_IGNORED_PREFIXES = ("fc.",)


class ConvBN(nn.Module):
  """Convolution without bias, inference batch norm (ε = 0.001), ReLU (torchvision's
  ``BasicConv2d``). ``padding`` is symmetric ``(pad_h, pad_w)``."""
  features: int
  kernel: Tuple[int, int]
  stride: int = 1
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    (ph, pw), s = self.padding, self.stride
    x = nn.Conv(self.features, self.kernel, strides=(s, s), padding=((ph, ph), (pw, pw)),
                use_bias=False, precision=jax.lax.Precision.HIGHEST, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool(x: Array) -> Array:
  """3×3, stride 1, padding 1, padded zeros not counted (TensorFlow's average pool)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: Array, stride: int = 1, pad: int = 1) -> Array:
  return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


def _chain(x: Array, convs: Sequence[ConvBN]) -> Array:
  for conv in convs:
    x = conv(x)
  return x


class BlockA(nn.Module):
  """35×35 block (``Mixed_5b``–``5d``): 1×1, 5×5, double 3×3 and pooled branches."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        ConvBN(64, (1, 1), name="branch1x1")(x),
        _chain(x, [ConvBN(48, (1, 1), name="branch5x5_1"),
                   ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")]),
        _chain(x, [ConvBN(64, (1, 1), name="branch3x3dbl_1"),
                   ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2"),
                   ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")]),
        ConvBN(self.pool_features, (1, 1), name="branch_pool")(_avg_pool(x)),
    ], axis=-1)


class BlockB(nn.Module):
  """Grid reduction 35 → 17 (``Mixed_6a``)."""

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        ConvBN(384, (3, 3), stride=2, name="branch3x3")(x),
        _chain(x, [ConvBN(64, (1, 1), name="branch3x3dbl_1"),
                   ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2"),
                   ConvBN(96, (3, 3), stride=2, name="branch3x3dbl_3")]),
        _max_pool(x, stride=2, pad=0),
    ], axis=-1)


class BlockC(nn.Module):
  """17×17 block with factorised 7×7 convolutions (``Mixed_6b``–``6e``)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    return jnp.concatenate([
        ConvBN(192, (1, 1), name="branch1x1")(x),
        _chain(x, [ConvBN(c7, (1, 1), name="branch7x7_1"),
                   ConvBN(c7, **row, name="branch7x7_2"),
                   ConvBN(192, **col, name="branch7x7_3")]),
        _chain(x, [ConvBN(c7, (1, 1), name="branch7x7dbl_1"),
                   ConvBN(c7, **col, name="branch7x7dbl_2"),
                   ConvBN(c7, **row, name="branch7x7dbl_3"),
                   ConvBN(c7, **col, name="branch7x7dbl_4"),
                   ConvBN(192, **row, name="branch7x7dbl_5")]),
        ConvBN(192, (1, 1), name="branch_pool")(_avg_pool(x)),
    ], axis=-1)


class BlockD(nn.Module):
  """Grid reduction 17 → 8 (``Mixed_7a``)."""

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        _chain(x, [ConvBN(192, (1, 1), name="branch3x3_1"),
                   ConvBN(320, (3, 3), stride=2, name="branch3x3_2")]),
        _chain(x, [ConvBN(192, (1, 1), name="branch7x7x3_1"),
                   ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2"),
                   ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3"),
                   ConvBN(192, (3, 3), stride=2, name="branch7x7x3_4")]),
        _max_pool(x, stride=2, pad=0),
    ], axis=-1)


class BlockE(nn.Module):
  """8×8 block with split 1×3 / 3×1 outputs (``Mixed_7b``, ``Mixed_7c``); ``max_pool`` is the
  FID graph's pooling branch of ``Mixed_7c``."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    def split(y, prefix):
      return [ConvBN(384, (1, 3), padding=(0, 1), name=f"{prefix}a")(y),
              ConvBN(384, (3, 1), padding=(1, 0), name=f"{prefix}b")(y)]

    b3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
    bd = _chain(x, [ConvBN(448, (1, 1), name="branch3x3dbl_1"),
                    ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")])
    pooled = _max_pool(x) if self.max_pool else _avg_pool(x)
    return jnp.concatenate([ConvBN(320, (1, 1), name="branch1x1")(x),
                            *split(b3, "branch3x3_2"), *split(bd, "branch3x3dbl_3"),
                            ConvBN(192, (1, 1), name="branch_pool")(pooled)], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3 up to the final average pool: ``(N, 299, 299, 3)`` in ``[-1, 1]`` →
  ``(N, 2048)``. Submodule names are the PyTorch ones (see :func:`load_fid_weights`)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = ConvBN(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x, stride=2, pad=0)
    x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool(x, stride=2, pad=0)
    for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = BlockA(pool, name=name)(x)
    x = BlockB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = BlockC(c7, name=name)(x)
    x = BlockD(name="Mixed_7a")(x)
    x = BlockE(name="Mixed_7b")(x)
    x = BlockE(max_pool=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


# ----------------------------------------------------------------------------------------------
# Weights: PyTorch state_dict layout <-> Flax variables.

def abstract_variables() -> dict:
  """Shapes of the Flax variables (``{'params', 'batch_stats'}``), without computing anything."""
  x = jax.ShapeDtypeStruct((1, RESOLUTION, RESOLUTION, 3), jnp.float32)
  return jax.eval_shape(lambda: InceptionV3().init(jax.random.key(0), jnp.zeros(x.shape)))


_LEAF_TO_TORCH = {("params", "kernel"): "conv.weight", ("params", "scale"): "bn.weight",
                  ("params", "bias"): "bn.bias", ("batch_stats", "mean"): "bn.running_mean",
                  ("batch_stats", "var"): "bn.running_var"}


def _torch_key(path) -> str:
  """Flax variable path ``('params', 'Mixed_5b', 'branch1x1', 'conv', 'kernel')`` →
  ``'Mixed_5b.branch1x1.conv.weight'``."""
  names = [p.key for p in path]
  collection, modules, leaf = names[0], names[1:-2], names[-1]
  return ".".join(modules + [_LEAF_TO_TORCH[(collection, leaf)]])


def _to_flax(array: np.ndarray) -> np.ndarray:
  """Conv ``(O, I, kH, kW)`` → ``(kH, kW, I, O)``; vectors unchanged."""
  return np.transpose(array, (2, 3, 1, 0)) if array.ndim == 4 else array


def _to_torch(array: np.ndarray) -> np.ndarray:
  """Conv ``(kH, kW, I, O)`` → ``(O, I, kH, kW)``; vectors unchanged."""
  return np.transpose(array, (3, 2, 0, 1)) if array.ndim == 4 else array


def to_state_dict(variables: dict) -> Dict[str, np.ndarray]:
  """Flax variables → PyTorch-layout arrays keyed as in pytorch-fid's ``state_dict``."""
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {_torch_key(path): _to_torch(np.asarray(v)) for path, v in flat}


def variables_from_state_dict(state_dict: Dict[str, np.ndarray]) -> dict:
  """PyTorch-layout arrays (pytorch-fid key names) → Flax variables of :class:`InceptionV3`.

  Raises:
    ValueError: naming missing keys, unexpected keys, or a key whose shape is wrong.
  """
  abstract = abstract_variables()
  paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  expected = {_torch_key(path): leaf for path, leaf in paths}
  ignored = lambda k: k.startswith(_IGNORED_PREFIXES) or k.endswith(_IGNORED_SUFFIXES)
  missing = sorted(set(expected) - set(state_dict))
  unexpected = sorted(k for k in set(state_dict) - set(expected) if not ignored(k))
  if missing or unexpected:
    raise ValueError(
        "Not the FID Inception-v3 weights (pytorch-fid's pt_inception-2015-12-05 converted to "
        f".npz, see fkdiff.evaluation.inception): {len(missing)} keys missing "
        f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}.")
  leaves = []
  for key, leaf in expected.items():
    array = _to_flax(np.asarray(state_dict[key], np.float32))
    if array.shape != leaf.shape:
      raise ValueError(f"Inception weight {key!r} has shape {np.shape(state_dict[key])}, "
                       f"expected {_to_torch(np.empty(leaf.shape, np.bool_)).shape}.")
    leaves.append(jnp.asarray(array))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def load_fid_weights(path: str) -> dict:
  """The Flax variables of :class:`InceptionV3` from the ``.npz`` of this module's docstring.

  Raises:
    FileNotFoundError: with the instructions to obtain the file, if ``path`` is not a file.
    ValueError: if the file is not an ``.npz`` of the FID Inception weights.
  """
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(
        f"No Inception weights at {path!r}. FID needs pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth (github.com/mseitzer/pytorch-fid, release "
        "'fid_weights') converted to .npz as shown in fkdiff/evaluation/inception.py; pass its "
        "path as --config.inception_weights=<file.npz>.")
  try:
    with np.load(path) as data:
      state_dict = {k: data[k] for k in data.files}
  except Exception as e:   # not a zip / not an npz
    raise ValueError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}).") from e
  return variables_from_state_dict(state_dict)
