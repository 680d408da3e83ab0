"""Distillation from an imported diffusers teacher and the job on it (configs/import_teacher.py).

The checkpoints are tiny random-weight ``UNet2DModel`` folders written here with
``save_diffusers_unet`` / ``save_scheduler_config`` (no PyTorch). The fast tests check the config
and error paths and that the student starts from the teacher's weights; the slow one runs the
``:smoke`` job end to end (import, teacher samples, distillation, SMC) and relaunches it.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fkdiff.data.pipeline import make_data_source
from fkdiff.experiments import imported as job
from fkdiff.models import imported
from fkdiff.models.diffusers_unet import UNet2DConfig, init_params
from fkdiff.training import checkpoint, runs, tasks
from fkdiff.training.config import config_module, default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 8
# Two levels, no attention: the cheapest compile of a class-conditional UNet2DModel.
TINY = UNet2DConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                    down_block_types=("DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False,
                    num_class_embeds=2)


def write_checkpoint(folder: str, config: UNet2DConfig = TINY, seed: int = 0) -> str:
  """A random-weight checkpoint folder in diffusers' format, with ``sample_size``."""
  params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(seed))
  imported.save_diffusers_unet(folder, config, params)
  imported.save_scheduler_config(folder, beta_schedule="linear", prediction_type="epsilon")
  path = os.path.join(folder, imported.CONFIG)
  with open(path) as f:
    unet = json.load(f)
  with open(path, "w") as f:
    json.dump({**unet, "sample_size": SIZE}, f)
  return folder


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
  return write_checkpoint(str(tmp_path_factory.mktemp("ckpt")))


def smoke_config(folder: str) -> ml_collections.ConfigDict:
  c = config_module(os.path.join(ROOT, "configs", "import_teacher.py")).get_config("smoke")
  c.checkpoint = folder
  return c


def distill_config(folder: str, arrays: str) -> ml_collections.ConfigDict:
  c = default_config()
  c.task = "distill"
  c.teacher.diffusers = folder
  c.model.name = "diffusers"
  c.data.update(name="arrays", array_file=arrays, batch_size=4)
  return c


def _one_line(error: BaseException, *needles: str) -> None:
  text = str(error)
  assert "\n" not in text.strip(), text
  for needle in needles:
    assert needle in text, (needle, text)


# ---------------------------------------------------------------------------------------------
# Config and errors (fast).


def test_the_job_config_needs_an_existing_checkpoint_folder(tmp_path):
  c = config_module(os.path.join(ROOT, "configs", "import_teacher.py")).get_config()
  with pytest.raises(ValueError) as info:
    job.validate_job_config(c)
  _one_line(info.value, "--config.checkpoint=")
  c.checkpoint = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError) as info:
    job.validate_job_config(c)
  _one_line(info.value, "nowhere", "not a folder")
  with pytest.raises(ValueError, match="Unknown variant"):
    config_module(os.path.join(ROOT, "configs", "import_teacher.py")).get_config("tiny")


@pytest.mark.slow   # a subprocess: ≈ 1 min of imports and start-up on a shared 2-core CPU.
def test_launch_dispatches_the_job_and_reports_a_partial_folder_in_one_line(tmp_path):
  folder = write_checkpoint(str(tmp_path / "ckpt"))
  os.remove(os.path.join(folder, imported.SCHEDULER))
  proc = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/import_teacher.py:smoke",
       f"--workdir={tmp_path / 'run'}", f"--config.checkpoint={folder}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  errors = [l for l in proc.stderr.splitlines() if l.startswith("FileNotFoundError")]
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
  assert "scheduler_config.json" in errors[0] and "Traceback" not in proc.stderr
  assert not (tmp_path / "run").exists()


def test_the_job_config_rejects_unknown_problems_and_keys(checkpoint_dir):
  c = smoke_config(checkpoint_dir)
  job.validate_job_config(c)
  c.problems = ("low_temperature", "or")
  with pytest.raises(ValueError, match="Unknown problem 'or'"):
    job.validate_job_config(c)
  c = smoke_config(checkpoint_dir)
  c.tasks = ("and",)   # the job's sampling problems are 'problems'
  with pytest.raises(ValueError, match="Unknown config key 'tasks'"):
    job.validate_job_config(c)
  c = smoke_config(checkpoint_dir)
  c.low_temperature.methods = ("smc_default", "cfg")
  with pytest.raises(ValueError, match="Unknown low_temperature method 'cfg'"):
    job.validate_job_config(c)


@pytest.mark.parametrize("damage, error, needles", [
    ("no_weights", FileNotFoundError, ("diffusion_pytorch_model.safetensors",)),
    ("truncated_weights", imported.CheckpointError, ("diffusion_pytorch_model.safetensors",)),
    ("no_scheduler", FileNotFoundError, ("scheduler_config.json",)),
    ("bad_json", imported.CheckpointError, ("config.json", "not valid JSON")),
    ("unsupported", imported.UnsupportedConfigError, ("time_embedding_type", "fourier")),
])
def test_a_bad_checkpoint_folder_fails_the_job_in_one_line(tmp_path, damage, error, needles):
  folder = write_checkpoint(str(tmp_path / "ckpt"))
  weights = os.path.join(folder, imported.WEIGHTS)
  if damage == "no_weights":
    os.remove(weights)
  elif damage == "truncated_weights":
    with open(weights, "rb") as f:
      data = f.read()
    with open(weights, "wb") as f:
      f.write(data[:len(data) // 2])
  elif damage == "no_scheduler":
    os.remove(os.path.join(folder, imported.SCHEDULER))
  elif damage == "bad_json":
    with open(os.path.join(folder, imported.CONFIG), "w") as f:
      f.write('{"block_out_channels": [8, 16],')
  else:
    path = os.path.join(folder, imported.CONFIG)
    with open(path) as f:
      unet = json.load(f)
    with open(path, "w") as f:
      json.dump({**unet, "time_embedding_type": "fourier"}, f)
  workdir = tmp_path / "run"
  with pytest.raises(error) as info:
    job.run(smoke_config(folder), str(workdir))
  _one_line(info.value, *needles)
  assert not workdir.exists()   # refused before anything is written


def test_distillation_takes_exactly_one_teacher(checkpoint_dir, tmp_path):
  arrays = str(tmp_path / "x.npz")
  np.savez(arrays, x=np.zeros((4, SIZE, SIZE, 3), np.float32), label=np.zeros(4, np.int32))
  c = distill_config(checkpoint_dir, arrays)
  c.teacher.workdir = str(tmp_path)
  with pytest.raises(ValueError) as info:
    tasks.frozen_teacher(c)
  _one_line(info.value, "teacher.workdir", "teacher.diffusers", "only one")
  c = distill_config("", arrays)
  with pytest.raises(ValueError) as info:   # the student names a network nobody gives
    tasks.frozen_teacher(c)
  _one_line(info.value, "teacher.diffusers", "not set")
  c.model.name = "mlp"
  with pytest.raises(checkpoint.CheckpointError) as info:
    tasks.frozen_teacher(c)
  _one_line(info.value, "teacher.workdir", "teacher.diffusers")
  c = distill_config(checkpoint_dir, arrays)
  c.model.name = "unet"
  with pytest.raises(ValueError) as info:
    tasks.frozen_teacher(c)
  _one_line(info.value, "model.name='diffusers'", "init_student")
  c = distill_config(checkpoint_dir, arrays)
  c.data.label_dropout = 0.1
  with pytest.raises(ValueError) as info:
    tasks.frozen_teacher(c)
  _one_line(info.value, "no null label", "label_dropout")
  c = distill_config(str(tmp_path / "missing"), arrays)
  with pytest.raises(FileNotFoundError) as info:
    tasks.frozen_teacher(c)
  _one_line(info.value, "missing")


def test_the_student_starts_as_the_imported_network(checkpoint_dir, tmp_path):
  """With teacher.init_student, the energy's h is the teacher's UNet with its weights: at step 0
  its backbone output is the teacher's backbone form, label by label."""
  arrays = str(tmp_path / "x.npz")
  x = np.random.default_rng(0).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
  np.savez(arrays, x=x, label=np.array([0, 1, 0, 1], np.int32))
  c = distill_config(checkpoint_dir, arrays)
  data = make_data_source(c.data)
  assert data.event_shape == (SIZE, SIZE, 3) and data.sigma_data == 0.5
  task = tasks.build_task(c, data)
  assert task.sigma_data == 0.5
  params = jax.jit(task.init_params)(jax.random.key(5))
  teacher = imported.load_diffusers_teacher(checkpoint_dir)
  leaves = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                        params["params"]["backbone"], teacher.params["params"]))
  assert leaves and max(leaves) == 0.0
  model = runs.energy_model(c, 0.5)
  h = teacher.backbone(sigma_data=0.5)
  y, c_noise = jnp.asarray(x[0]), jnp.float32(0.1)
  for label in (0, 1):
    ours = model.apply(params, y, c_noise, jnp.int32(label), method=lambda m, *a: m.backbone(*a))
    np.testing.assert_allclose(ours, h.apply(teacher.params, y, c_noise, jnp.int32(label)),
                               rtol=0, atol=1e-6)
  # The loss runs on the teacher's labels (the imported network refuses none here).
  loss, aux = jax.jit(task.loss_fn)(params, data.sample(jax.random.key(1), 4),
                                    jax.random.key(2), task.frozen)
  assert np.isfinite(float(loss)) and aux["sigma"].shape == (4,)


def test_an_arrays_data_source_names_a_bad_file(tmp_path):
  data = default_config().data
  data.name, data.array_file = "arrays", str(tmp_path / "none.npz")
  with pytest.raises(FileNotFoundError, match="none.npz"):
    make_data_source(data)
  np.savez(tmp_path / "bad.npz", y=np.zeros(3))
  data.array_file = str(tmp_path / "bad.npz")
  with pytest.raises(ValueError, match="no examples 'x'"):
    make_data_source(data)


# ---------------------------------------------------------------------------------------------
# The job end to end (slow).


@pytest.mark.slow
def test_the_smoke_job_runs_end_to_end_and_reuses_its_stages(tmp_path, capsys):
  folder = write_checkpoint(str(tmp_path / "ckpt"))
  workdir = str(tmp_path / "run")
  config = smoke_config(folder)
  results = job.run(config, workdir)

  teacher = imported.load_diffusers_teacher(folder)
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(teacher.params))
  assert results["teacher"]["parameters"] == count and results["teacher"]["classes"] == 2
  for sigma in config.check.sigmas:
    row = results["teacher"][f"sigma_{sigma:g}"]
    assert np.isfinite(row["teacher_mse"]) and row["identity_mse"] == pytest.approx(sigma**2,
                                                                                   rel=0.5)
  expected = {("low_temperature", "beta2", m) for m in config.low_temperature.methods}
  expected |= {("and", "0+1", m) for m in config.conjunction.methods}
  got = {(p, s, m) for p in job.PROBLEMS for s, by in results.get(p, {}).items() for m in by}
  assert got == expected
  for p, s, m in got:
    metrics = results[p][s][m]
    assert metrics["num_nonfinite"] == 0 and metrics["seconds"] > 0
    labels = 2 if p == "and" else 1
    levels = config.sampler.num_steps
    # smc_score (unit noise, no rejuvenation): one value-and-gradient per level and label.
    assert metrics["nfe_per_sample"] == labels * (levels - 1 if m == "naive" else levels)
    assert os.path.isfile(os.path.join(workdir, f"{p}_{s}_{m}.png"))
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  out = capsys.readouterr().out
  assert out.count("Sampled ") == len(expected)
  samples = np.load(os.path.join(workdir, job.SAMPLES_FILE))
  assert samples["x"].shape == (config.teacher_samples.num, SIZE, SIZE, 3)
  assert np.all(np.abs(samples["x"]) <= 1) and set(samples["label"]) == {0, 1}

  # The energy started from the teacher's weights: two steps of lr ≤ 1e-5 moved them little.
  e_dir = os.path.join(workdir, job.ENERGY_DIR)
  params, step = runs.restore_params(e_dir, use_ema=False)
  assert step == config.distill.training.num_steps
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                       params["params"]["backbone"], teacher.params["params"]))
  assert max(diffs) < 1e-4 and max(diffs) > 0
  assert runs.read_run_config(e_dir).teacher.diffusers == os.path.abspath(folder)

  # A relaunch reuses the teacher samples and the distillation stage.
  before = sorted(os.listdir(checkpoint.checkpoint_dir(e_dir)))
  config.problems = ("low_temperature",)
  config.low_temperature.methods = ("naive",)
  again = job.run(config, workdir)
  out = capsys.readouterr().out
  assert "reusing" in out and "Stage distill: finished at step 2" in out
  assert "drawing" not in out and "training in" not in out
  assert sorted(os.listdir(checkpoint.checkpoint_dir(e_dir))) == before
  assert set(again) == {"teacher", "distill", "low_temperature"}
