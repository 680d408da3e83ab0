"""Images: the U-Net backbone, the tfds image sources, conditional energies and the image configs.

Compilation of U-Net programs dominates on a CPU, so the configs are run with their ``:smoke``
sizes (a tiny U-Net) for one step; full-size architectures are checked by shape only.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from fkdiff import models
from fkdiff.data import images
from fkdiff.diffusion import edm
from fkdiff.sampling import ScoreOnly, smc_sample, targets
from fkdiff.training import validate_config
from fkdiff.training.config import config_module

# A tiny random U-Net whose output depends on everything (no zero-initialised branches).
# Initialising with an RBG key compiles ~3× faster on a CPU than with the default threefry key.
INIT_KEY = jax.random.key(1, impl="rbg")
TINY = dict(width=8, depth=1, emb_dim=16, channel_mult=(1, 2), attn_resolutions=(4,),
            zero_init_output=False, zero_init_residual=False)
# Compiling without XLA's backend optimisations: a U-Net training step compiles in ~7 s instead
# of ~18 s on a CPU (the tests' run time does not matter).
_FAST_COMPILE = {"cpu": {"xla_backend_optimization_level": 0}}.get(jax.default_backend())


def _config(filename, variant):
  return config_module(os.path.join(ROOT, "configs", filename)).get_config(variant)


# ----------------------------------------------------------------------------------------------
# U-Net.

def test_unet_batched_equals_per_example_and_none_is_the_null_label():
  net = models.UNet(num_classes=10, **TINY)
  y = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  c_noise, label = jnp.array([-1.0, 0.0, 0.5]), jnp.array([0, 4, 10])
  params = jax.jit(net.init)(INIT_KEY, y[0], c_noise[0])

  @jax.jit
  def outputs(params):
    return (net.apply(params, y, c_noise, label),
            jax.vmap(lambda a, c, l: net.apply(params, a, c, l))(y, c_noise, label),
            net.apply(params, y, c_noise, None), net.apply(params, y, c_noise, jnp.full(3, 10)),
            net.apply(params, y[1], c_noise[1], 3))

  batched, single, none, null, other = outputs(params)
  assert batched.shape == y.shape
  np.testing.assert_allclose(batched, single, atol=1e-5)
  np.testing.assert_allclose(none, null, atol=1e-6)
  assert not np.allclose(batched[1], other, atol=1e-3)


def test_unet_attributes_and_remat_keep_values_and_parameter_paths():
  net = models.UNet(num_attributes=5, **TINY)
  remat = models.UNet(num_attributes=5, remat_blocks=True, **TINY)
  y = jax.random.normal(jax.random.key(0), (8, 8, 3))
  params = jax.jit(net.init)(INIT_KEY, y, 0.0)
  assert (jax.tree.structure(params) ==
          jax.tree.structure(jax.eval_shape(remat.init, INIT_KEY, y, 0.0)))
  attrs = jnp.array([1, 0, 2, 2, 1])

  @jax.jit
  def outputs(params):
    return (net.apply(params, y, 0.3, attrs), remat.apply(params, y, 0.3, attrs),
            net.apply(params, y, 0.3, None),
            net.apply(params, y, 0.3, models.null_label(num_attributes=5)),
            net.apply(params, y, 0.3, jnp.array([0, 0, 2, 2, 1])))

  plain, rematted, none, null, other = outputs(params)
  np.testing.assert_allclose(plain, rematted, atol=1e-5)
  np.testing.assert_allclose(none, null, atol=1e-6)
  assert not np.allclose(plain, other, atol=1e-3)


def test_unet_dropout_needs_a_key_and_differs_per_key_and_example():
  """Dropout (rate 0.3) changes the output only in a ``deterministic=False`` call with a key,
  differently per key and per example; without a key the output is bit-identical to rate 0's
  with the same parameters (the parameter tree does not depend on the rate)."""
  one_level = {**TINY, "channel_mult": (1,), "attn_resolutions": ()}
  net, plain = models.UNet(dropout=0.3, **one_level), models.UNet(**one_level)
  y = jax.random.normal(jax.random.key(0), (8, 8, 1))
  params = jax.jit(plain.init)(INIT_KEY, y, 0.0)
  assert jax.tree.structure(params) == jax.tree.structure(jax.eval_shape(net.init, INIT_KEY, y,
                                                                         0.0))
  denoise = models.make_denoiser(net, 0.5)
  k1, k2 = jax.random.key(1), jax.random.key(2)
  drop = lambda k: net.apply(params, y, 0.3, deterministic=False, rngs={"dropout": k})

  @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
  def outputs(params):
    return dict(
        rate0=plain.apply(params, y, 0.3), no_key=net.apply(params, y, 0.3), k1=drop(k1),
        k2=drop(k2),
        # Two copies of one example with per-example keys, as the losses vmap the denoiser.
        pair=jax.vmap(denoise, in_axes=(None, 0, None, None, 0))(
            params, jnp.stack([y, y]), 0.8, None, jax.random.split(k1, 2)))

  out = {k: np.asarray(v) for k, v in outputs(params).items()}
  np.testing.assert_array_equal(out["no_key"], out["rate0"])
  assert np.abs(out["k1"] - out["rate0"]).max() > 1e-2
  assert np.abs(out["k1"] - out["k2"]).max() > 1e-2
  assert np.abs(out["pair"][0] - out["pair"][1]).max() > 1e-2
  with pytest.raises(ValueError, match="dropout must be in"):
    models.UNet(dropout=1.0, **one_level).apply(params, y, 0.3)


def test_resblock_dropout_sits_after_the_second_norm_and_silu_before_the_last_conv():
  """EDM's position, read off the inputs and outputs of the layers of one residual block."""
  import flax.linen as nn
  block = models.unet.ResBlock(8, zero_init=False, dropout=0.5, deterministic=False)
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 8))
  emb = jax.random.normal(jax.random.key(1), (1, 32))

  @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
  def layers(x, emb):
    params = block.init({"params": INIT_KEY, "dropout": INIT_KEY}, x, emb)
    seen = {}

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and context.module.name:
        seen[context.module.name] = (args[0], out)
      return out

    with nn.intercept_methods(record):
      block.apply(params, x, emb, rngs={"dropout": jax.random.key(4)})
    return seen

  seen = layers(x, emb)
  assert {"GroupNorm_1", "Dropout_0", "Conv_1"} <= set(seen), sorted(seen)
  dropped_in, dropped_out = (np.asarray(a) for a in seen["Dropout_0"])
  np.testing.assert_allclose(dropped_in, jax.nn.silu(seen["GroupNorm_1"][1]), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(seen["Conv_1"][0]), dropped_out)
  zeroed = np.mean(dropped_out == 0)
  assert 0.3 < zeroed < 0.7, zeroed                       # rate 0.5, on 128 values.
  kept = dropped_out != 0
  np.testing.assert_allclose(dropped_out[kept], 2 * dropped_in[kept], rtol=1e-6)


def test_full_size_architectures_build(monkeypatch):
  """Paper-scale U-Nets of every config, by shape only (no compilation)."""
  counts = {}
  for filename, shape in [("cifar10.py", (32, 32, 3)), ("celeba64.py", (64, 64, 3)),
                          ("ffhq64.py", (64, 64, 3))]:
    config = _config(filename, "teacher")
    validate_config(config)
    validate_config(_config(filename, "distill"))
    net = models.get_backbone(config.model)
    params = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros(shape), jnp.zeros(()))
    counts[filename] = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  assert 50e6 < counts["cifar10.py"] < 70e6, counts      # EDM's DDPM++ CIFAR-10: 56M.
  assert 50e6 < counts["ffhq64.py"] < 70e6, counts


# ----------------------------------------------------------------------------------------------
# Data.

@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_digits_tfds_builder_and_batches_are_a_pure_function_of_seed_and_step(digits_dir):
  config = _config("digits_teacher.py", "smoke")
  config.data.data_dir = digits_dir
  arrays = images.load_arrays(config.data)
  assert arrays["image"].shape == (1500, 8, 8, 1) and arrays["image"].dtype == np.uint8
  assert set(np.unique(arrays["label"])) == set(range(10))
  from sklearn.datasets import load_digits
  expected = load_digits().images[:1500]   # the train split, in tfds' (shuffled) order.
  np.testing.assert_allclose(np.sort(arrays["image"].reshape(1500, -1).sum(-1) / 255 * 16),
                             np.sort(expected.reshape(1500, -1).sum(-1)), atol=0.5)
  host_batch = images.host_batch_fn(arrays, random_flip=True)
  a, b, c = host_batch(0, 7, 16), host_batch(0, 7, 16), host_batch(0, 8, 16)
  np.testing.assert_array_equal(a["x"], b["x"])
  assert not np.array_equal(a["x"], c["x"])
  assert a["x"].shape == (16, 8, 8, 1) and a["label"].shape == (16,)
  assert a["x"].min() >= -1 and a["x"].max() <= 1


def test_an_unprepared_dataset_says_how_to_prepare_it(tmp_path):
  config = _config("cifar10.py", "teacher,smoke")
  config.data.data_dir = str(tmp_path)
  with pytest.raises(images.DatasetNotPreparedError, match="tfds build cifar10"):
    images.load_arrays(config.data)
  config = _config("ffhq64.py", "teacher,smoke")
  config.data.image_dir = str(tmp_path)
  with pytest.raises(images.DatasetNotPreparedError, match="image_dir"):
    images.load_arrays(config.data)


def _image_folder(root, classes, size=20, per_class=3):
  from PIL import Image
  rng = np.random.default_rng(0)
  for name in classes:
    os.makedirs(os.path.join(root, "train", name))
    for i in range(per_class):
      Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(
          os.path.join(root, "train", name, f"{i}.png"))
  return str(root)


# ----------------------------------------------------------------------------------------------
# One real training step of every image config (tiny sizes).

def _one_step(config):
  """Builds the trainer of ``config`` and runs one step; returns the metrics."""
  from fkdiff.training.train import make_trainer
  trainer = make_trainer(config)
  state = trainer.make_state(trainer.init_key)
  batch = trainer.make_batch(0)
  np.testing.assert_array_equal(np.asarray(batch["x"]), np.asarray(trainer.make_batch(0)["x"]))
  state, metrics = trainer.step_fn(state, batch, trainer.task.frozen)
  computed = metrics.compute()
  assert int(state.step) == 1 and np.isfinite(computed["loss"]), computed
  return batch


@pytest.mark.slow
@pytest.mark.parametrize("filename,data", [("cifar10.py", "mock"), ("celeba64.py", "mock"),
                                           ("afhqv2_64.py", "folder"), ("ffhq64.py", "folder")])
def test_image_teacher_configs_train_one_step(filename, data, tmp_path):
  import tensorflow_datasets as tfds
  config = _config(filename, "teacher,smoke")
  if data == "folder":
    config.data.image_dir = _image_folder(tmp_path, ["cat", "dog", "wild"])
    batch = _one_step(config)
  else:
    with tfds.testing.mock_data(num_examples=16):
      batch = _one_step(config)
  assert batch["x"].shape[1:] == {"cifar10.py": (32, 32, 3)}.get(filename, (64, 64, 3))
  if filename == "celeba64.py":
    assert batch["label"].shape == (8, 40)
  if filename == "ffhq64.py":
    assert "label" not in batch


@pytest.mark.slow   # training steps of an image config
def test_cifar10_teacher_takes_finite_steps_with_dropout():
  """The CIFAR-10 teacher with EDM's dropout 0.13 (smoke sizes, mock data): two production
  training steps (the 2nd moves the zero-initialised convs that dropout feeds) are finite."""
  import tensorflow_datasets as tfds
  from fkdiff.training.train import make_trainer
  assert _config("cifar10.py", "teacher").model.unet.dropout == 0.13
  config = _config("cifar10.py", "teacher,smoke")
  assert config.model.unet.dropout == 0.13          # the smoke variant keeps it.
  with tfds.testing.mock_data(num_examples=16):
    trainer = make_trainer(config)
    state = trainer.make_state(trainer.init_key)
    step_fn = jax.jit(trainer.step_body, compiler_options=_FAST_COMPILE)   # = trainer.step_fn
    for step in range(2):
      state, metrics = step_fn(state, trainer.make_batch(step), trainer.task.frozen)
      assert np.isfinite(metrics.compute()["loss"]), step
  assert int(state.step) == 2
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(state.params))


@pytest.mark.parametrize("task_name", ["teacher", "energy_dsm"])
def test_dropout_acts_in_the_training_loss_only(task_name):
  """At the same random parameters, batch and key, the loss of a task with dropout 0.13 differs
  from the same task's at rate 0; its ``denoise_fn`` and ``energy_fn`` (sampling, evaluation) are
  bit-identical to rate 0's."""
  from fkdiff.data.source import DataSource
  from fkdiff.training.tasks import build_task
  config = _config("cifar10.py", "teacher,smoke")
  config.task = task_name
  rate0 = config.copy_and_resolve_references()
  rate0.model.unet.dropout = 0.0
  data = DataSource(sample=None, event_shape=(8, 8, 3), sigma_data=0.5)
  tasks = [build_task(c, data) for c in (config, rate0)]

  # Random parameters (no zero-initialised branch hides dropout), drawn with NumPy: no compiling.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: (0.3 * rng.standard_normal(p.shape)).astype(np.float32),
                        jax.eval_shape(tasks[0].init_params, INIT_KEY))
  x = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  batch = {"x": x, "label": np.array([0, 3, 9, 10])}

  @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
  def evaluate(params, key):
    losses = [t.loss_fn(params, batch, key, None)[0] for t in tasks]
    outs = [t.denoise_fn(params, x[0], 0.5) if t.energy_fn is None else
            t.energy_fn(params, x[0], 0.5) for t in tasks]   # an energy's denoiser is its grad.
    return losses, outs

  (loss, loss_rate0), (out, out_rate0) = evaluate(params, jax.random.key(7))
  assert np.isfinite(loss) and np.isfinite(loss_rate0)
  # Float-rounding differences would be ~1e-7 relative; the same computation gives exactly 0.
  assert abs(float(loss) - float(loss_rate0)) > 1e-4 * float(loss_rate0), (loss, loss_rate0)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), out,
               out_rate0)


# ----------------------------------------------------------------------------------------------
# Conditional energies and their compositions.

def test_label_dropout_uses_the_null_token():
  from fkdiff.training.tasks import drop_labels
  config = _config("celeba64.py", "teacher,smoke")
  labels = jnp.ones((64, 40), jnp.int32)
  config.data.attribute_dropout = 0.0
  dropped = drop_labels({"x": jnp.zeros((64, 1)), "label": labels}, jax.random.key(0), config)
  rows = np.asarray(dropped["label"])
  assert set(np.unique(rows)) == {1, models.unet.NULL_ATTRIBUTE}
  assert all(np.all(r == 1) or np.all(r == 2) for r in rows) and (rows == 2).any()
  config = _config("digits_teacher.py", "smoke")
  config.data.label_dropout = 0.5
  dropped = drop_labels({"x": jnp.zeros((64, 1)), "label": jnp.zeros(64, jnp.int32)},
                        jax.random.key(0), config)
  assert set(np.unique(np.asarray(dropped["label"]))) == {0, 10}


@pytest.fixture(scope="module")
def conditional_energy():
  """A random class-conditional U-Net energy on 8×8×1 images (one level: cheap to compile)."""
  unet = models.UNet(num_classes=10, **{**TINY, "channel_mult": (1,), "attn_resolutions": ()})
  model = models.EnergyModel(unet, 0.5)
  params = jax.jit(model.init)(INIT_KEY, jnp.zeros((8, 8, 1)), jnp.ones(()))
  energy = lambda p, x, s, label=None: model.apply(p, x, s, label)
  return energy, params


def test_conditional_energy_with_null_label_is_the_unconditional_energy(conditional_energy):
  energy, params = conditional_energy
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  sigma = jnp.array([0.05, 0.5, 2.0, 20.0])
  run = jax.jit(jax.vmap(energy, in_axes=(None, 0, 0, 0)))
  uncond = jax.jit(jax.vmap(lambda p, a, s: energy(p, a, s), in_axes=(None, 0, 0)))(params, x,
                                                                                    sigma)
  np.testing.assert_array_equal(run(params, x, sigma, jnp.full(4, 10)), uncond)
  assert not np.allclose(run(params, x, sigma, jnp.full(4, 3)), uncond)


@pytest.mark.slow   # SMC runs on a U-Net energy
def test_product_and_guidance_identities_on_energies_and_smc_weights(conditional_energy):
  """``E_c + E_c = 2 E_c`` (product = tempering by 2) and AND(c, c) = guidance weight 2, on
  potential values and on a whole SMC run (same key: same particles and weights). The run uses
  score-only weights, which see the components ``w_i, ∇E_i`` and not only their sum (exact-ratio
  weights see only ``U`` and ``∇U``, whose identity the values check already)."""
  energy, params = conditional_energy
  e_null = lambda p: lambda x, s: energy(p, x, s)
  e_c = lambda p: lambda x, s: energy(p, x, s, 3)
  pairs = {
      "product_vs_tempered": (lambda p: targets.product([e_c(p), e_c(p)]),
                              lambda p: targets.tempered(e_c(p), 2.0)),
      "and_vs_guidance2": (lambda p: targets.conditional_and(e_null(p), [e_c(p), e_c(p)]),
                           lambda p: targets.conditional_and(e_null(p), [e_c(p)], [2.0])),
  }
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
  sigmas = edm.karras_sigmas(4, 0.05, 5.0)

  @jax.jit
  def run(params, key):
    out = {}
    for name, (u, v) in pairs.items():
      values = [jax.vmap(f(params), in_axes=(0, None))(x, 0.7) for f in (u, v)]
      runs = [smc_sample(key, f(params), sigmas, 4, (8, 8, 1), sigma_data=0.5, scheme=ScoreOnly())
              for f in (u, v)]
      out[name] = (values, [(r.particles, r.log_weights, r.info.ess) for r in runs])
    return out

  for name, (values, runs) in run(params, jax.random.key(2)).items():
    np.testing.assert_allclose(values[0], values[1], rtol=1e-5, atol=1e-4, err_msg=name)
    for a, b in zip(*runs):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)
