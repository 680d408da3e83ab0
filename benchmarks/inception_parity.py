"""fkdiff's FID Inception against pytorch-fid's, on seeded random weights; writes the fixture of
tests/test_inception_parity.py.

pytorch-fid builds its network (torchvision's Inception-v3 with the FID blocks) as usual, but its
weight download is replaced by ``tests/helpers.random_state_dict(WEIGHTS_SEED)`` — the arrays fkdiff
loads from its ``.npz`` — so nothing is fetched. Three stages are compared, each on the same input:

1. preprocessing: pytorch-fid's ``F.interpolate`` (bilinear, ``align_corners=False``) and
   ``2x - 1`` of ``uint8 / 255`` against :func:`fkdiff.evaluation.fid.inception_input`;
2. the network alone: pytorch-fid's 2048-d block on its own preprocessed tensor against
   :class:`fkdiff.evaluation.inception.InceptionV3` on that very tensor (and on noise at 139×139);
3. the whole pipeline: uint8 images → 2048-d features, the numbers the fixture keeps.

Needs PyTorch, torchvision and pytorch-fid besides fkdiff's own dependencies::

  pip install torch torchvision pytorch-fid
  PYTHONPATH=.:tests python benchmarks/inception_parity.py           # report only
  PYTHONPATH=.:tests python benchmarks/inception_parity.py --write   # and the fixture
"""

import argparse
import os
import sys

import jax
import numpy as np
import torch

from fkdiff.evaluation import fid, inception
from helpers import random_state_dict

WEIGHTS_SEED = 0
IMAGES_SEED = 1
# (name, shape of a uint8 batch): gray and colour upsampled; 320×24 is downsampled in height.
IMAGE_SETS = (("gray8", (1, 8, 8, 1)), ("rgb32", (2, 32, 32, 3)), ("rgb64", (1, 64, 64, 3)),
              ("tall320x24", (1, 320, 24, 3)))
FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                       "data", "inception_parity.npz")


def import_pytorch_fid():
  """``pytorch_fid.inception``. PyPI's Linux torchvision wheels are CUDA builds: beside a CPU-only
  torch their operator library does not load and the import fails on ``torchvision::nms``; the
  two schemas it needs are then declared (pytorch-fid runs none of torchvision's operators)."""
  try:
    from pytorch_fid import inception as pt_inception
  except RuntimeError as e:
    if "torchvision::nms" not in str(e):
      raise
    for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "pytorch_fid")]:
      del sys.modules[name]
    import_pytorch_fid.stub = torch.library.Library("torchvision", "DEF")   # kept alive
    for op in ("nms", "qnms"):
      import_pytorch_fid.stub.define(
          f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    from pytorch_fid import inception as pt_inception
  return pt_inception


def pytorch_fid_model(state_dict, resize_input: bool, normalize_input: bool):
  """pytorch-fid's ``InceptionV3([3])`` (2048-d pool), its weights ``state_dict`` instead of the
  download (``fc.*`` added as in the real file)."""
  pt_inception = import_pytorch_fid()
  full = {k: torch.from_numpy(v) for k, v in state_dict.items()}
  full["fc.weight"], full["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
  original = pt_inception.load_state_dict_from_url
  pt_inception.load_state_dict_from_url = lambda *args, **kwargs: full
  try:
    model = pt_inception.InceptionV3([3], resize_input=resize_input,
                                     normalize_input=normalize_input, use_fid_inception=True)
  finally:
    pt_inception.load_state_dict_from_url = original
  return model.eval()


def _torch_features(model, x_nchw: torch.Tensor) -> np.ndarray:
  with torch.no_grad():
    return model(x_nchw)[0][:, :, 0, 0].numpy()


def _torch_preprocessed(images_uint8: np.ndarray) -> np.ndarray:
  """pytorch-fid's input to its first convolution, NHWC: ``ToTensor`` (``/ 255``), three
  channels (``Image.convert('RGB')``), 299×299 bilinear, ``2x - 1``."""
  x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(255)
  x = x.expand(-1, 3, -1, -1)
  x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
  return (2 * x - 1).permute(0, 2, 3, 1).numpy()


def _diff(name: str, ours: np.ndarray, theirs: np.ndarray) -> float:
  abs_diff = np.abs(np.asarray(ours, np.float64) - theirs)
  rel = abs_diff.max() / np.abs(theirs).max()
  print(f"  {name:<34} max|Δ| {abs_diff.max():.2e}   max|Δ|/max|ref| {rel:.2e}   "
        f"(ref max {np.abs(theirs).max():.3f}, mean {np.mean(theirs):.3f})")
  return float(rel)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--write", action="store_true", help=f"write {FIXTURE}")
  args = parser.parse_args()

  state_dict = random_state_dict(WEIGHTS_SEED)
  variables = inception.variables_from_state_dict(state_dict)
  core = jax.jit(inception.InceptionV3().apply)
  pt_core = pytorch_fid_model(state_dict, resize_input=False, normalize_input=False)
  pt_full = pytorch_fid_model(state_dict, resize_input=True, normalize_input=True)
  rng = np.random.default_rng(IMAGES_SEED)
  fixture = {"weights_seed": np.int64(WEIGHTS_SEED)}

  print(f"torch {torch.__version__}, jax {jax.__version__}, weights seed {WEIGHTS_SEED}")
  print("network alone, on uniform noise in [-1, 1]:")
  for size in (139, 299):
    x = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    _diff(f"{size}x{size} 2048-d", core(variables, x),
          _torch_features(pt_core, torch.from_numpy(x).permute(0, 3, 1, 2)))

  for name, shape in IMAGE_SETS:
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    print(f"{name} {shape}:")
    theirs_in = _torch_preprocessed(images)
    ours_in = np.asarray(fid.inception_input(images.astype(np.float32) / 127.5 - 1))
    _diff("1. preprocessing (299x299x3)", ours_in, theirs_in)
    _diff("2. network on pytorch-fid's input", core(variables, theirs_in),
          _torch_features(pt_core, torch.from_numpy(theirs_in).permute(0, 3, 1, 2)))
    theirs = _torch_features(pt_full, torch.from_numpy(images).permute(0, 3, 1, 2)
                             .float().div(255).expand(-1, 3, -1, -1))
    _diff("3. uint8 -> features", fid.batch_features(variables, images / 127.5 - 1), theirs)
    fixture[f"images_{name}"] = images
    fixture[f"features_{name}"] = theirs.astype(np.float32)

  if args.write:
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    np.savez_compressed(FIXTURE, **fixture)
    print(f"wrote {os.path.relpath(FIXTURE)} ({os.path.getsize(FIXTURE) / 1024:.0f} KiB)")


if __name__ == "__main__":
  main()
