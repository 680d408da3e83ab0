"""Imported diffusers teachers: fkdiff's ``UNet2DModel`` and DDPM/DDIM denoiser against diffusers'.

tests/data/diffusers/ holds three random-weight ``UNet2DModel`` checkpoint folders that diffusers
wrote with ``save_pretrained``, three ``scheduler_config.json`` files its ``save_config`` wrote, and
(parity.npz) PyTorch's outputs on inputs drawn from seeds; benchmarks/diffusers_fixtures.py wrote
them and says how. No PyTorch or diffusers here: the weights are read with safetensors' NumPy
loader and the inputs regenerated with NumPy.

Tolerance: in float32 fkdiff and diffusers differed by at most 1.9e-6 of the largest output (UNet)
and 1.3e-6 of the largest ``x̂_0`` (denoiser); the bound, 1e-4 of it, is the issue's. A wrong
detail moves the output by far more than that (see :func:`test_the_fixtures_exercise_the_embeddings`).
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from fkdiff.diffusion import edm, vp
from fkdiff.models import energy, imported
from fkdiff.models.diffusers_unet import UNet2DConfig, UNet2DModel, abstract_params, to_state_dict

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "diffusers")
TOLERANCE = 1e-4   # of the largest output's magnitude.
CASES = ("uncond_32", "uncond_64", "class_cond_32", "class_cond_64", "options_32")
SCHEDULERS = ("ddpm_linear_epsilon", "ddpm_scaled_linear_v", "ddim_cosine_sample")


def _fixture():
  if not hasattr(_fixture, "data"):
    with np.load(os.path.join(DATA, "parity.npz")) as f:
      _fixture.data = {k: f[k] for k in f.files}
  return _fixture.data


def _inputs(seed, shape):
  """benchmarks/diffusers_fixtures.py's ``inputs``."""
  return np.random.default_rng(int(seed)).standard_normal(shape, dtype=np.float32)


def _case(key):
  data = _fixture()
  theirs = data[f"{key}_out"]
  return (_inputs(data[f"{key}_seed"], theirs.shape), data[f"{key}_timesteps"],
          data.get(f"{key}_labels"), theirs)


def _assert_close(ours, theirs):
  scale = np.abs(theirs).max()
  assert ours.shape == theirs.shape and 0.5 < scale < 1e3, (ours.shape, theirs.shape, scale)
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=TOLERANCE * scale)


def _one_line_error(cls, fn, *needles):
  with pytest.raises(cls) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, (needle, message)
  return message


# ------------------------------------------------------------------------- parity with diffusers

@pytest.mark.parametrize("key", CASES)
def test_unet_matches_diffusers(key):
  config, params = imported.load_diffusers_unet(os.path.join(DATA, key.rsplit("_", 1)[0]))
  x, timesteps, labels, theirs = _case(key)
  ours = jax.jit(UNet2DModel(config).apply)(params, x, timesteps, labels)
  _assert_close(ours, theirs)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_denoiser_matches_the_schedulers_x0_prediction(name):
  """``D(x, σ_t)`` at ``x = x_t √(1 + σ_t²)`` is the scheduler's ``pred_original_sample`` at t."""
  data = _fixture()
  teacher = imported.load_diffusers_teacher(os.path.join(DATA, "uncond"),
                                            os.path.join(DATA, "schedulers", name))
  timesteps, theirs = data[f"sched_{name}_timesteps"], data[f"sched_{name}_x0"]
  x_t = _inputs(data[f"sched_{name}_seed"], theirs.shape)
  sigma = teacher.module.schedule.sigmas[timesteps]
  ours = np.asarray(jax.jit(teacher.denoise)(x_t * np.sqrt(1 + sigma**2)[:, None, None, None],
                                             sigma))
  for i, t in enumerate(timesteps):   # each timestep at its own scale (σ_max ≈ 157 at t = 999).
    _assert_close(ours[i], theirs[i])
  assert teacher.module.prediction_type == {"ddpm_linear_epsilon": "epsilon",
                                            "ddpm_scaled_linear_v": "v_prediction",
                                            "ddim_cosine_sample": "sample"}[name]


def test_the_fixtures_exercise_the_embeddings():
  """A wrong timestep embedding (sin/cos order), label or attention would fail the parity tests:
  each moves the output by far more than the tolerance."""
  config, params = imported.load_diffusers_unet(os.path.join(DATA, "class_cond"))
  x, timesteps, labels, theirs = _case("class_cond_32")
  apply = jax.jit(lambda c, p, t, lab: UNet2DModel(c).apply(p, x, t, lab), static_argnums=0)
  scale = np.abs(theirs).max()
  moved = lambda out: np.abs(np.asarray(out) - theirs).max() / scale
  assert moved(apply(config, params, timesteps, labels)) < TOLERANCE
  assert moved(apply(config, params, timesteps, (labels + 1) % 10)) > 100 * TOLERANCE
  assert moved(apply(config, params, timesteps + 1.0, labels)) > 10 * TOLERANCE
  flipped = config.__class__(**{**config.__dict__, "flip_sin_to_cos": False})
  assert moved(apply(flipped, params, timesteps, labels)) > 100 * TOLERANCE
  one_head = config.__class__(**{**config.__dict__, "attention_head_dim": None})
  assert moved(apply(one_head, params, timesteps, labels)) > 100 * TOLERANCE


# --------------------------------------------------------------------- schedule and backbone form

def test_timestep_of_sigma_interpolates_log_sigma_and_clamps():
  schedule = vp.schedule_from_config({"beta_schedule": "linear", "num_train_timesteps": 1000})
  sigmas = schedule.sigmas.astype(np.float64)
  np.testing.assert_allclose(vp.sigma_to_timestep(schedule, sigmas[[0, 10, 500, 999]]),
                             [0, 10, 500, 999], atol=2e-3)
  between = np.sqrt(sigmas[100] * sigmas[101])        # halfway in log σ.
  np.testing.assert_allclose(vp.sigma_to_timestep(schedule, between), 100.5, atol=2e-3)
  np.testing.assert_allclose(vp.sigma_to_timestep(schedule, [1e-4, 1e4]), [0, 999])
  # σ_t² = (1 − ᾱ_t)/ᾱ_t with ᾱ_t = ∏(1 − β_s), β linear in [1e-4, 0.02].
  alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  np.testing.assert_allclose(sigmas, np.sqrt((1 - alpha_bar) / alpha_bar), rtol=1e-4)


def test_scheduler_configs_turn_into_schedules():
  cosine = vp.schedule_from_config({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 50})
  f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2)**2
  np.testing.assert_allclose(cosine.alphas_cumprod[:-1], f(np.arange(1, 50) / 50) / f(0), rtol=1e-4)
  scaled = vp.schedule_from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                    "beta_end": 0.012, "prediction_type": "v_prediction"})
  np.testing.assert_allclose(1 - scaled.alphas_cumprod[0], 0.00085, rtol=1e-4)
  assert scaled.prediction_type == "v_prediction"
  trained = vp.schedule_from_config({"trained_betas": [0.1, 0.2, 0.5]})
  np.testing.assert_allclose(trained.alphas_cumprod, [0.9, 0.72, 0.36], rtol=1e-6)
  for config, needle in (({"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid'"),
                         ({"prediction_type": "score"}, "prediction_type='score'"),
                         ({"_class_name": "PNDMScheduler"}, "_class_name='PNDMScheduler'"),
                         ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
                         ({"variance_type": "learned_range"}, "variance_type='learned_range'")):
    _one_line_error(vp.UnsupportedSchedulerError, lambda: vp.schedule_from_config(config), needle)


@pytest.mark.parametrize("model", ["uncond", "class_cond"])
def test_backbone_form_reproduces_the_denoiser_and_initialises_an_energy(model):
  """``edm_denoiser`` of the backbone ``h`` is the teacher's ``D`` (on and off the grid, and
  outside the schedule's σ range); ``EnergyModel(h)`` takes the network's parameters."""
  teacher = imported.load_diffusers_teacher(os.path.join(DATA, model),
                                            os.path.join(DATA, "schedulers", "ddpm_linear_epsilon"))
  label = None if teacher.config.num_class_embeds is None else jnp.asarray(4)
  x = jnp.asarray(_inputs(0, (32, 32, 3)))
  backbone = teacher.backbone(sigma_data=0.5)
  sigmas = jnp.asarray([0.003, 0.05, 0.7, 3.0, 150.0, 400.0])

  @jax.jit
  def both(sigma):
    via_h = edm.edm_denoiser(lambda y, c: backbone.apply(teacher.params, y, c, label), x, sigma,
                             0.5)
    return via_h, teacher.denoise(x, sigma, label)

  via_h, direct = jax.vmap(both)(sigmas)
  scale = np.abs(np.asarray(direct)).max(axis=(1, 2, 3), keepdims=True)
  err = np.abs(np.asarray(via_h - direct)).max(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_array_less(err, 1e-5 * scale)
  # The batched call equals the per-example ones.
  batch = jax.jit(teacher.denoise)(jnp.stack([x, x]), sigmas[2:4],
                                   None if label is None else jnp.stack([label, label]))
  np.testing.assert_allclose(batch, direct[2:4], atol=1e-5 * np.abs(direct[2:4]).max())

  model_ = energy.EnergyModel(backbone, sigma_data=0.5)
  e_params = jax.eval_shape(model_.init, jax.random.key(0), x, jnp.ones(()), label)
  e_params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), e_params)
  init = energy.init_from_teacher(e_params, teacher.params)
  leaves = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                        init["params"]["backbone"], teacher.params["params"]))
  assert leaves and all(leaves)


# ----------------------------------------------------------------------- writer and the errors

def test_round_trip_writer_matches_diffusers_layout(tmp_path):
  """fkdiff writes the tensors diffusers writes (names, shapes) and reads back its own folder."""
  with open(os.path.join(DATA, "class_cond", "config.json")) as f:
    config = UNet2DConfig.from_dict(json.load(f))
  assert UNet2DConfig.from_dict(config.to_dict()) == config
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32),
                        abstract_params(config))
  theirs = safetensors.numpy.load_file(os.path.join(DATA, "class_cond",
                                                    "diffusion_pytorch_model.safetensors"))
  ours = to_state_dict(params)
  assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
  folder = imported.save_diffusers_unet(str(tmp_path / "unet"), config, params)
  config2, params2 = imported.load_diffusers_unet(folder)
  assert config2 == config
  same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, params2))
  assert len(same) == len(ours) and all(same)
  # A pipeline's layout (unet/ and scheduler/ subfolders) loads as a teacher.
  shutil.move(folder, str(tmp_path / "pipe" / "unet"))
  imported.save_scheduler_config(str(tmp_path / "pipe" / "scheduler"), num_train_timesteps=100)
  teacher = imported.load_diffusers_teacher(str(tmp_path / "pipe"))
  assert len(teacher.module.schedule.alphas_cumprod) == 100
  assert jax.jit(teacher.denoise)(jnp.zeros((8, 8, 3)), 1.0, 2).shape == (8, 8, 3)


def test_old_attention_names_load(tmp_path):
  """Checkpoints saved before diffusers renamed attention (query/key/value/proj_attn) load."""
  folder = tmp_path / "old"
  shutil.copytree(os.path.join(DATA, "uncond"), folder)
  path = str(folder / "diffusion_pytorch_model.safetensors")
  state = safetensors.numpy.load_file(path)
  old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  renamed = {}
  for k, v in state.items():
    for new, was in old.items():
      k = k.replace(f".{new}.", f".{was}.") if "attentions" in k else k
    renamed[k] = v
  assert any(".proj_attn." in k for k in renamed)
  safetensors.numpy.save_file(renamed, path)
  _, params = imported.load_diffusers_unet(str(folder))
  _, reference = imported.load_diffusers_unet(os.path.join(DATA, "uncond"))
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params, reference)))


def _copy(tmp_path, model="uncond"):
  folder = tmp_path / model
  shutil.copytree(os.path.join(DATA, model), folder)
  return folder


def test_missing_files_are_named(tmp_path):
  folder = _copy(tmp_path)
  (folder / "diffusion_pytorch_model.safetensors").unlink()
  _one_line_error(FileNotFoundError, lambda: imported.load_diffusers_unet(str(folder)),
                  "diffusion_pytorch_model.safetensors")
  (folder / "config.json").unlink()
  _one_line_error(FileNotFoundError, lambda: imported.load_diffusers_unet(str(folder)),
                  "config.json")
  _one_line_error(FileNotFoundError, lambda: imported.load_diffusers_unet(str(tmp_path / "none")),
                  "none")
  _one_line_error(FileNotFoundError, lambda: imported.load_schedule(str(folder)),
                  "scheduler_config.json")


def test_bad_json_and_corrupt_weights_are_named(tmp_path):
  folder = _copy(tmp_path)
  weights = folder / "diffusion_pytorch_model.safetensors"
  weights.write_bytes(weights.read_bytes()[:5000])
  _one_line_error(imported.CheckpointError, lambda: imported.load_diffusers_unet(str(folder)),
                  "cannot read", "diffusion_pytorch_model.safetensors")
  (folder / "config.json").write_text('{"in_channels": 3,, }')
  _one_line_error(imported.CheckpointError, lambda: imported.load_diffusers_unet(str(folder)),
                  "config.json is not valid JSON", "line 1")


@pytest.mark.parametrize("change,needle", [
    ("missing", "missing tensor conv_in.weight"),
    ("extra", "unexpected tensor extra.weight"),
    ("shape", "tensor conv_out.bias has shape (4,), expected (3,)"),
])
def test_tensor_mismatches_are_named(tmp_path, change, needle):
  folder = _copy(tmp_path)
  path = str(folder / "diffusion_pytorch_model.safetensors")
  state = safetensors.numpy.load_file(path)
  if change == "missing":
    del state["conv_in.weight"]
  elif change == "extra":
    state["extra.weight"] = np.zeros(3, np.float32)
  else:
    state["conv_out.bias"] = np.zeros(4, np.float32)
  safetensors.numpy.save_file(state, path)
  _one_line_error(imported.CheckpointError, lambda: imported.load_diffusers_unet(str(folder)),
                  needle)


@pytest.mark.parametrize("key,value", [
    ("down_block_types", ["SkipDownBlock2D", "AttnDownBlock2D"]),
    ("up_block_types", ["AttnUpBlock2D", "CrossAttnUpBlock2D"]),
    ("time_embedding_type", "fourier"),
    ("resnet_time_scale_shift", "spatial"),
    ("class_embed_type", "timestep"),
    ("downsample_type", "resnet"),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"),
    ("act_fn", "tanh"),
    ("cross_attention_dim", 64),
])
def test_unsupported_config_keys_are_named(tmp_path, key, value):
  folder = _copy(tmp_path)
  with open(folder / "config.json") as f:
    config = json.load(f)
  config[key] = value
  with open(folder / "config.json", "w") as f:
    json.dump(config, f)
  message = _one_line_error(imported.UnsupportedConfigError,
                            lambda: imported.load_diffusers_unet(str(folder)), f"{key}=")
  assert repr(value if not isinstance(value, list) else value)[:12] in message, message
