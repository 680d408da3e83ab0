"""Loading finished runs (``fkdiff.training.runs``): the trainer's own networks and EMA parameters,
σ_d from ``config.json`` alone (and the fallback of runs written before it was recorded), clear errors."""

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

import fkdiff
from conftest import tiny_teacher_config
from fkdiff.training import runs
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


def _toy_job_config():
  from conftest import ROOT
  from fkdiff.training.config import config_module
  return config_module(os.path.join(ROOT, "configs/toy2d.py")).get_config("smoke")


def _tree_bytes(root):
  """Every file under ``root`` with its bytes (and the set of paths)."""
  out = {}
  for d, _, files in os.walk(root):
    for name in files:
      path = os.path.join(d, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_a_job_or_another_task_never_writes_into_a_run(trained, tmp_path):
  """A toy job launched into a teacher's workdir, a distillation into a teacher's and a teacher
  into a distillation's are refused before anything is written: every file byte-identical."""
  from fkdiff.experiments import toy2d
  teacher = _copy(trained["teacher"][0], tmp_path, "teacher")
  energy = _copy(trained["energy"][0], tmp_path, "energy")
  before = {p: _tree_bytes(p) for p in (teacher, energy)}
  job = _toy_job_config()
  with pytest.raises(checkpoint.CheckpointError, match="holds a teacher run; this is a toy2d job"):
    toy2d.run(job, str(teacher))
  with pytest.raises(checkpoint.CheckpointError, match="holds a teacher run; this is a distill"):
    train_and_evaluate(_config("distill", str(trained["teacher"][0])), str(teacher))
  with pytest.raises(checkpoint.CheckpointError, match="holds a distill run; this is a teacher"):
    train_and_evaluate(_config("teacher"), str(energy))
  assert {p: _tree_bytes(p) for p in (teacher, energy)} == before


def test_a_relaunch_that_would_change_what_the_weights_mean_is_refused(trained, tmp_path):
  """A finished teacher relaunched on other data is refused (it exited 0 after rewriting
  config.json over the unchanged weights), leaving every file as it was; the same config
  relaunched is accepted."""
  teacher = _copy(trained["teacher"][0], tmp_path, "teacher")
  before = _tree_bytes(teacher)
  other = _config("teacher")
  other.data.mixture = "grid"
  with pytest.raises(checkpoint.CheckpointError, match="data.mixture: 'ring' in the workdir"):
    train_and_evaluate(other, str(teacher))
  assert _tree_bytes(teacher) == before
  train_and_evaluate(trained["teacher"][1], str(teacher))      # the same run: fine


def test_a_job_relaunch_rewrites_its_config_only_after_running(tmp_path):
  """``start_job`` writes a job's config.json on its first launch only: a relaunch with other
  settings that a stage then refuses leaves the file as it was (it was rewritten first)."""
  from fkdiff.experiments import common
  first, second = _toy_job_config(), _toy_job_config()
  second.low_temperature.beta = 5.0
  common.start_job(first, str(tmp_path / "job"))
  before = _tree_bytes(tmp_path / "job")
  common.start_job(second, str(tmp_path / "job"))
  assert _tree_bytes(tmp_path / "job") == before
  assert checkpoint.read_config(str(tmp_path / "job")).low_temperature.beta == 3.0


def test_a_workdir_that_cannot_be_one_is_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  for bad, says in ((tmp_path / "file", "is a file"),
                    (tmp_path / "file" / "run", "is inside the file")):
    with pytest.raises(checkpoint.CheckpointError, match=says) as e:
      train_and_evaluate(_config("teacher"), str(bad))
    assert "\n" not in str(e.value)
  assert (tmp_path / "file").read_text() == "x"


def test_a_job_workdir_lists_the_runs_inside(trained, tmp_path):
  """load_energy / load_teacher on a job's workdir name its stage runs (it raised
  ``AttributeError: 'task'``); a distillation without teacher.workdir says how to set it."""
  job = tmp_path / "job"
  (job / "energies").mkdir(parents=True)
  shutil.copytree(trained["teacher"][0], job / "teacher")
  shutil.copytree(trained["energy"][0], job / "energies" / "plain")
  checkpoint.write_config(str(job), _toy_job_config())
  with pytest.raises(checkpoint.CheckpointError, match=r"toy2d job.*energies/plain \(distill\)"):
    runs.load_energy(str(job))
  with pytest.raises(checkpoint.CheckpointError, match=r"teacher \(teacher\)"):
    runs.load_teacher(str(job))
  with pytest.raises(checkpoint.CheckpointError, match="teacher.workdir is not set"):
    train_and_evaluate(_config("distill", ""), str(tmp_path / "energy"))
  assert not (tmp_path / "energy").exists()


def test_arrays_swapped_in_from_another_step_are_detected(trained, tmp_path):
  """A checkpoint whose arrays are valid but not the ones saved (step 10's data under step 20:
  what a flipped bit in an uncompressed chunk also looks like to orbax) is a CheckpointError on
  every restore path, naming the step; the untouched step still loads."""
  from fkdiff.training.train import make_trainer
  teacher = _copy(trained["teacher"][0], tmp_path, "teacher")
  steps = teacher / "checkpoints"
  shutil.rmtree(steps / "20" / "default")
  shutil.copytree(steps / "10" / "default", steps / "20" / "default")
  with pytest.raises(checkpoint.CheckpointError, match="step 20 .* is corrupt: its (ema_)?params"):
    runs.load_teacher(str(teacher))
  with pytest.raises(checkpoint.CheckpointError, match="step 20 .* is corrupt"):
    checkpoint.load_run(str(teacher))
  trainer = make_trainer(trained["teacher"][1])
  abstract = jax.eval_shape(trainer.make_state, trainer.init_key)
  manager = checkpoint.make_manager(str(teacher), 3, 10)
  with pytest.raises(checkpoint.CheckpointError, match="step 20 .* is corrupt"):
    checkpoint.restore_latest(manager, abstract)
  manager.close()
  shutil.rmtree(steps / "20")
  assert runs.load_teacher(str(teacher))[1] is not None       # step 10 is intact
  (steps / "10" / "commit_success.txt").unlink()              # harmless on a local filesystem
  assert runs.load_teacher(str(teacher))[1] is not None
  (steps / "10" / checkpoint.STEP_METADATA_FILE).unlink()     # the digests with it: refused
  with pytest.raises(checkpoint.CheckpointError, match="step 10 .* has no _CHECKPOINT_METADATA"):
    runs.load_teacher(str(teacher))


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
