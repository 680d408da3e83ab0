"""Loading finished runs (``fkdiff.runs``): the trainer's own networks and EMA parameters, σ_d from
``config.json`` alone (and the fallback of runs written before it was recorded), clear errors."""

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

import fkdiff
from conftest import tiny_teacher_config
from fkdiff import runs
from fkdiff.training import checkpoint, train_and_evaluate
from fkdiff.training.train import make_trainer

# σ_d of the tiny configs' data, the default ring (8 modes, radius 2, std 0.2): the RMS
# per-coordinate standard deviation, sqrt(r²/2 + s²).
RING_SIGMA_DATA = math.sqrt(2.0**2 / 2 + 0.2**2)
X = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32) * 2
SIGMAS = np.array([0.01, 0.1, 0.5, 2.0, 20.0], np.float32)


def _config(task, teacher_workdir=""):
  c = tiny_teacher_config(num_steps=20, checkpoint_every=10, log_every=10)
  c.eval.num_samples = 0            # no final sampling: the tests only load the checkpoints.
  c.task = task
  c.teacher.workdir = teacher_workdir
  c.teacher.log_asymmetry = False
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny teacher and a tiny energy distilled from it: ``{name: (workdir, config)}``."""
  root = tmp_path_factory.mktemp("runs")
  teacher = _config("teacher")
  train_and_evaluate(teacher, str(root / "teacher"))
  energy = _config("distill", str(root / "teacher"))
  train_and_evaluate(energy, str(root / "energy"))
  return {"teacher": (root / "teacher", teacher), "energy": (root / "energy", energy)}


def _copy(run, tmp_path, name):
  out = tmp_path / name
  shutil.copytree(run, out)
  return out


def _trainer_values(config, workdir, fn_name, use_ema=True):
  """The trainer's own ``task.<fn_name>`` on the checkpoint's (EMA) parameters at (X, SIGMAS)."""
  task = make_trainer(config).task
  _, tree, _ = checkpoint.load_run(str(workdir))
  params = tree["ema_params" if use_ema else "params"]
  return jax.vmap(lambda x, s: getattr(task, fn_name)(params, x, s))(X, SIGMAS), params


def test_teacher_loads_as_the_trainer_made_it(trained):
  workdir, config = trained["teacher"]
  denoise_fn, params, sigma_data = fkdiff.load_teacher(str(workdir))
  want, want_params = _trainer_values(config, workdir, "denoise_fn")
  jax.tree.map(np.testing.assert_array_equal, params, want_params)
  np.testing.assert_array_equal(jax.vmap(lambda x, s: denoise_fn(params, x, s))(X, SIGMAS), want)
  assert sigma_data == pytest.approx(RING_SIGMA_DATA, rel=1e-6)
  saved = json.loads((workdir / checkpoint.CONFIG_FILE).read_text())
  assert saved["data"]["sigma_data"] == sigma_data        # recorded at training time.
  # The optimised parameters on request.
  _, raw, _ = runs.load_teacher(str(workdir), use_ema=False)
  jax.tree.map(np.testing.assert_array_equal, raw, _trainer_values(
      config, workdir, "denoise_fn", use_ema=False)[1])


def test_energy_loads_as_the_trainer_made_it(trained):
  workdir, config = trained["energy"]
  energy_fn, params, sigma_data = fkdiff.load_energy(str(workdir))
  want, want_params = _trainer_values(config, workdir, "energy_fn")
  jax.tree.map(np.testing.assert_array_equal, params, want_params)
  np.testing.assert_array_equal(jax.vmap(lambda x, s: energy_fn(params, x, s))(X, SIGMAS), want)
  assert sigma_data == pytest.approx(RING_SIGMA_DATA, rel=1e-6)
  run = runs.load(str(workdir))
  assert (run.step, run.config.task, run.sigma_data) == (20, "distill", sigma_data)
  want_d, _ = _trainer_values(config, workdir, "denoise_fn")
  np.testing.assert_array_equal(jax.vmap(lambda x, s: run.denoise_fn(params, x, s))(X, SIGMAS),
                                want_d)


def test_sigma_data_comes_from_config_json_alone(trained, tmp_path):
  """An energy's σ_d is read from its own config.json: with the teacher gone it still loads, and
  the value written there is the one used."""
  energy = _copy(trained["energy"][0], tmp_path, "energy")    # teacher.workdir: the original.
  config = json.loads((energy / checkpoint.CONFIG_FILE).read_text())
  config["teacher"]["workdir"] = str(tmp_path / "no_teacher")
  config["data"]["sigma_data"] = 0.75
  (energy / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
  energy_fn, params, sigma_data = runs.load_energy(str(energy))
  assert sigma_data == 0.75
  original_fn, _, recorded = runs.load_energy(str(trained["energy"][0]))
  assert recorded == pytest.approx(RING_SIGMA_DATA, rel=1e-6)
  assert float(energy_fn(params, X[0], SIGMAS[2])) != float(original_fn(params, X[0], SIGMAS[2]))


def test_runs_written_before_sigma_data_was_recorded_still_load(trained, tmp_path):
  """``data.sigma_data = 0`` (as in older runs): the teacher's config.json (its path relative to
  the run, as digits.export_models writes it) gives σ_d; without it, a clear error."""
  teacher = _copy(trained["teacher"][0], tmp_path, "teacher")
  energy = _copy(trained["energy"][0], tmp_path, "energy")
  for run, teacher_dir in ((teacher, ""), (energy, os.path.join("..", "teacher"))):
    config = json.loads((run / checkpoint.CONFIG_FILE).read_text())
    config["data"]["sigma_data"], config["teacher"]["workdir"] = 0.0, teacher_dir
    (run / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
  assert runs.load_teacher(str(teacher))[2] == pytest.approx(RING_SIGMA_DATA, rel=1e-6)
  assert runs.load_energy(str(energy))[2] == pytest.approx(RING_SIGMA_DATA, rel=1e-6)
  shutil.rmtree(teacher)
  with pytest.raises(checkpoint.CheckpointError, match="before runs recorded σ_d"):
    runs.load_energy(str(energy))


def test_missing_or_wrong_runs_are_reported(trained, tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
    runs.load_energy(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoint.CheckpointError, match="no config.json"):
    runs.load_teacher(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="'teacher' run; load_energy loads energy runs"):
    runs.load_energy(str(trained["teacher"][0]))
  with pytest.raises(ValueError, match="'distill' run; load_teacher loads runs of task"):
    runs.load_teacher(str(trained["energy"][0]))


def test_corrupt_checkpoint_is_reported(trained, tmp_path):
  energy = _copy(trained["energy"][0], tmp_path, "energy")
  for root, _, files in os.walk(energy / "checkpoints" / "20"):
    for name in files:
      if name not in ("_CHECKPOINT_METADATA", "commit_success.txt"):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  with pytest.raises(checkpoint.CheckpointError, match="Cannot read checkpoint step 20 of .*energy"):
    runs.load_energy(str(energy))


def test_the_shipped_demo_energies_load():
  """Runs exported before σ_d was recorded (colabs/digits_demo): images, σ_d = 0.5."""
  from conftest import ROOT
  demo = os.path.join(ROOT, "colabs", "digits_demo", "energies", "class")
  energy_fn, params, sigma_data = runs.load_energy(demo)
  assert sigma_data == 0.5
  value = energy_fn(params, np.zeros((8, 8, 1), np.float32), 0.5, 3)
  assert value.shape == () and np.isfinite(float(value))


def test_import_fkdiff_stays_light():
  from conftest import run_python
  out = run_python("import fkdiff, sys; fkdiff.load_energy; "
                   "print(sorted(m for m in ('tensorflow', 'clu') if m in sys.modules))").stdout
  assert out.strip() == "[]"
