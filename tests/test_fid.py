"""The FID protocol: the FID Inception-v3 network, its weight file, features and the FID job.

The real weights cannot be downloaded here, so the network is checked against the published size
of torchvision's Inception-v3 and run with random weights written in the same file format.
"""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from conftest import ROOT
from fkdiff.evaluation import fid, frechet, inception


def _config(filename, variant):
  spec = importlib.util.spec_from_file_location(filename, os.path.join(ROOT, "configs", filename))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def random_state_dict(seed=0):
  """Random FID-Inception weights in pytorch-fid's layout, He-scaled so features stay O(1)."""
  rng = np.random.default_rng(seed)
  abstract = jax.tree.map(lambda s: np.zeros(s.shape, np.float32),
                          inception.abstract_variables())
  state = inception.to_state_dict(abstract)
  for key, value in state.items():
    if key.endswith("conv.weight"):
      fan_in = np.prod(value.shape[1:])
      state[key] = rng.normal(0, np.sqrt(2 / fan_in), value.shape).astype(np.float32)
    elif key.endswith("running_var"):
      state[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    elif key.endswith(("bn.weight",)):
      state[key] = np.ones(value.shape, np.float32)
    else:
      state[key] = rng.normal(0, 0.1, value.shape).astype(np.float32)
  return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("inception") / "fid_inception_v3.npz")
  state = random_state_dict()
  state["fc.weight"] = np.zeros((1008, 2048), np.float32)   # in the real file; ignored.
  state["fc.bias"] = np.zeros((1008,), np.float32)
  np.savez(path, **state)
  return path


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


@pytest.mark.slow
def test_fid_job_on_a_distilled_digits_energy_resumes_and_rejects_bad_input(
    weights_file, tmp_path, capsys):
  """Teacher → distilled energy (smoke sizes, real digits) → the ``:fid,smoke`` job with
  classifier-free guidance; a relaunch reuses the reference statistics and the features."""
  from fkdiff import jobs
  data_dir = str(tmp_path / "tfds")
  teacher = _config("digits_teacher.py", "smoke")
  distill = _config("digits_distill.py", "smoke")
  teacher.data.data_dir = distill.data.data_dir = data_dir
  jobs.run(teacher, str(tmp_path / "teacher"))
  distill.teacher.workdir = str(tmp_path / "teacher")
  jobs.run(distill, str(tmp_path / "energy"))

  config = _config("cifar10.py", "fid,smoke")
  config.run_workdir, config.inception_weights = str(tmp_path / "energy"), weights_file
  config.sampler.guidance = 2.0
  out = str(tmp_path / "fid")
  results = jobs.run(config, out)
  assert results["num_samples"] == 8 and results["reference_images"] == 8
  assert results["run_task"] == "distill" and results["nfe_per_sample"] == 2 * (2 * 2 - 1)
  assert np.isfinite(results["fid"]) and results["fid"] > 0
  assert {"results.json", "reference_stats.npz", "sample_stats.npz", "samples.png"} <= set(
      os.listdir(out))
  with open(os.path.join(out, "results.json")) as f:
    assert json.load(f)["fid"] == results["fid"]
  capsys.readouterr()
  again = jobs.run(config, out)                      # nothing left to sample: same FID.
  printed = capsys.readouterr().out
  assert "reusing" in printed and "Resuming FID sampling at batch 2/2" in printed
  assert again["fid"] == results["fid"]

  config.inception_weights = str(tmp_path / "none.npz")
  with pytest.raises(FileNotFoundError, match="Inception weights"):
    jobs.run(config, out)
  config.inception_weights = weights_file
  config.sampler.name = "ddim"
  with pytest.raises(ValueError, match="Unknown sampler.name 'ddim'"):
    jobs.run(config, out)
  with pytest.raises(ValueError, match="Unknown config key"):
    config.sampler.name = "heun"
    config.unknown = 1
    jobs.run(config, out)
