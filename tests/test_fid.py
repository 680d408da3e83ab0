"""The FID protocol: the FID Inception-v3 network, its weight file, features and statistics.

The real weights cannot be downloaded here, so the network is checked against the published size
of torchvision's Inception-v3 and run with random weights written in the same file format. The FID
job itself runs on the distilled digits energies of tests/test_digits_job.py.
"""

import jax
import numpy as np
import pytest

from fkdiff.evaluation import fid, frechet, inception
from helpers import random_state_dict, write_random_fid_weights


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  return write_random_fid_weights(str(tmp_path_factory.mktemp("inception") / "fid.npz"))


@pytest.fixture(scope="module")
def features(weights_file):
  return fid.make_feature_fn(inception.load_fid_weights(weights_file), batch_size=4)


def test_network_has_torchvisions_inception_v3_size_without_heads():
  # torchvision's inception_v3: 27,161,264 parameters, of which the auxiliary head
  # (98,560 + 2,459,136 + 769,000) and the 1000-way classifier (2,049,000) are not FID's.
  abstract = inception.abstract_variables()
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
  assert count == 27_161_264 - 3_326_696 - 2_049_000
  state = inception.to_state_dict(jax.tree.map(lambda s: np.zeros(s.shape), abstract))
  assert len(state) == 94 * 5    # 94 conv + batch-norm units, five arrays each.
  assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
  assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
  assert state["Mixed_6e.branch7x7_2.conv.weight"].shape == (192, 192, 1, 7)
  out = jax.eval_shape(inception.InceptionV3().apply, abstract,
                       jax.ShapeDtypeStruct((2, 299, 299, 3), np.float32))
  assert out.shape == (2, 2048)


def test_weight_file_round_trip_and_bad_files(weights_file, tmp_path):
  variables = inception.load_fid_weights(weights_file)
  with np.load(weights_file) as f:
    torch_kernel = f["Mixed_5b.branch5x5_2.conv.weight"]          # (O, I, kH, kW)
    running_var = f["Mixed_7a.branch3x3_2.bn.running_var"]
  kernel = variables["params"]["Mixed_5b"]["branch5x5_2"]["conv"]["kernel"]   # (kH, kW, I, O)
  np.testing.assert_array_equal(kernel, torch_kernel.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7a"]["branch3x3_2"]["bn"]["var"],
                                running_var)
  back = inception.to_state_dict(variables)
  with np.load(weights_file) as f:
    assert set(back) | {"fc.weight", "fc.bias"} == set(f.files)
    np.testing.assert_array_equal(back["Conv2d_4a_3x3.bn.bias"], f["Conv2d_4a_3x3.bn.bias"])

  with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
    inception.load_fid_weights(str(tmp_path / "absent.npz"))
  (tmp_path / "junk.npz").write_text("not a zip")
  with pytest.raises(ValueError, match="not a readable .npz"):
    inception.load_fid_weights(str(tmp_path / "junk.npz"))
  state = random_state_dict()
  del state["Mixed_6b.branch_pool.bn.running_mean"]
  with pytest.raises(ValueError, match="1 keys missing.*Mixed_6b.branch_pool.bn.running_mean"):
    inception.variables_from_state_dict(state)
  state = random_state_dict()
  state["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"Mixed_5b.branch1x1.conv.weight.*expected \(64, 192, 1, 1\)"):
    inception.variables_from_state_dict(state)


@pytest.mark.slow   # Inception on 299×299 inputs
def test_features_follow_the_protocol(features):
  rng = np.random.default_rng(0)
  gray = rng.uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
  f_gray = features(gray)
  assert f_gray.shape == (8, 2048) and np.all(np.isfinite(f_gray)) and f_gray.std() > 1e-3
  # Gray images are the three-channel images with equal channels.
  np.testing.assert_allclose(features(np.repeat(gray, 3, -1)), f_gray, rtol=1e-5, atol=1e-6)
  # Images are quantised to uint8 first: a shift of a third of a level changes nothing ...
  levels = np.round((gray + 1) * 127.5) / 127.5 - 1
  np.testing.assert_array_equal(features(levels + 1 / 3 / 127.5), features(levels))
  # ... and batch boundaries do not matter (8 = two batches of 4; 5 = one padded).
  np.testing.assert_allclose(features(gray[:5]), f_gray[:5], rtol=1e-5, atol=1e-6)
  # FID: zero for a set against itself, positive once the set changes.
  same = frechet.feature_stats(f_gray)
  assert fid.fid(same, same) == pytest.approx(0.0, abs=1e-6)
  assert fid.fid(frechet.feature_stats(features(-gray)), same) > 1e-3


def test_stats_files_round_trip_and_bad_files(tmp_path):
  rng = np.random.default_rng(1)
  stats = frechet.feature_stats(rng.normal(size=(3000, 2048)))
  fid.save_stats(str(tmp_path / "s.npz"), stats)
  loaded = fid.load_stats(str(tmp_path / "s.npz"))
  np.testing.assert_array_equal(loaded.mu, stats.mu)
  np.testing.assert_array_equal(loaded.cov, stats.cov)
  assert loaded.n == 3000
  np.savez(str(tmp_path / "bad.npz"), mu=np.zeros(3), sigma=np.eye(3))
  with pytest.raises(ValueError, match="expected mu"):
    fid.load_stats(str(tmp_path / "bad.npz"))
  np.savez(str(tmp_path / "other.npz"), mean=np.zeros(3))
  with pytest.raises(ValueError, match="'mu' and 'sigma'"):
    fid.load_stats(str(tmp_path / "other.npz"))
