"""fkdiff's FID pipeline (uint8 images → 2048-d Inception features) against pytorch-fid's own code.

tests/data/inception_parity.npz holds uint8 images and the features pytorch-fid's
``InceptionV3([3])`` (resize and normalisation on) gave them with ``random_state_dict(seed)`` as its
weights; benchmarks/inception_parity.py wrote it and says how. The weights are regenerated here with
NumPy, so neither they nor PyTorch are needed.

Tolerance: in float32 fkdiff and pytorch-fid differed by at most 5.6e-7 of the largest feature on
these images (9e-7 for the network alone on noise; the resizes by 3.6e-7 of a pixel). One wrong
detail moves the features by 2e-2 to 3e-1 of it: padding counted in the average pools, an average
pool in ``Mixed_7c``, batch-norm ε = 1e-5, an antialiased resize. The bound, 1e-5, is well above
the former and far below the latter.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from fkdiff.evaluation import fid, inception
from helpers import random_state_dict

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "inception_parity.npz")
TOLERANCE = 1e-5   # of the largest feature's magnitude.


def test_features_match_pytorch_fid():
  with np.load(FIXTURE) as f:
    data = {k: f[k] for k in f.files}
  names = sorted(k[len("images_"):] for k in data if k.startswith("images_"))
  # One network compilation for all sets: each set is preprocessed at its own shape.
  x = jnp.concatenate([fid.inception_input(data[f"images_{n}"] / 127.5 - 1.0) for n in names])
  variables = inception.variables_from_state_dict(random_state_dict(int(data["weights_seed"])))
  ours = np.asarray(jax.jit(inception.InceptionV3().apply)(variables, x))
  theirs = np.concatenate([data[f"features_{n}"] for n in names])
  scale = np.abs(theirs).max()
  assert ours.shape == theirs.shape == (5, inception.FEATURES) and 10 < scale < 1e3
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE * scale)
