"""Time-consistent distillation (METHOD.md §3): the time-score term and the heat diagnostics.

Ground truth: ``N(0, v I)`` diffused to σ has ``E = ‖x‖²/(2(v+σ²)) + (d/2) log(2π(v+σ²))`` and
``∂_σE = dσ/(v+σ²) − σ‖x‖²/(v+σ²)²``; a Gaussian mixture's exact energies (fkdiff.data.gmm) satisfy
the heat equation ``∂_σE = σ(ΔE − ‖∇E‖²)`` (normalised gauge, ``c = 0``).
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_teacher_config
from fkdiff.data import gmm, toy
from fkdiff.evaluation import time_consistency
from fkdiff.losses import make_distill_loss, noise_time_target, teacher_time_target
from fkdiff.losses import time_score_loss
from fkdiff.losses.distill import vmap_energy_grads, vmap_sigma_derivative
from fkdiff.models import MLP, EnergyModel, Gauge, energy as energy_lib
from helpers import fit

V, D = 0.7, 2


def _gauss_dsigma(x, sigma):
  c = V + sigma**2
  return D * sigma / c - sigma * jnp.sum(x**2, -1) / c**2


@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])
def test_noise_target_is_unbiased_and_the_loss_sits_at_its_noise_floor(sigma):
  """``E[(d − ‖ε‖²)/σ | x_σ] = ∂_σE``: the residual ``t − ∂_σE`` is orthogonal to functions of
  ``x_σ``; at the exact energy (gauge ``b = 0``) the weighted loss equals its noise floor
  ``E Var(‖ε‖² | x)/(2d) = s²(2 − s²)``, ``s² = v/(v+σ²)`` (the posterior of ε is
  ``N(σx/(v+σ²), s² I)``), and any other ``∂_σE`` (here ``+1/σ``) scores higher."""
  n = 400_000
  k0, k1 = jax.random.split(jax.random.key(0))
  x0 = jnp.sqrt(V) * jax.random.normal(k0, (n, D))
  eps = jax.random.normal(k1, (n, D))
  x = x0 + sigma * eps
  sig = jnp.full((n,), sigma)
  t = noise_time_target(eps, sig)
  resid = t - _gauss_dsigma(x, sigma)
  for f in (jnp.ones(n), jnp.sum(x**2, -1) / (V + sigma**2), jnp.tanh(x[:, 0])):
    prod = resid * f
    se = float(jnp.std(prod)) / np.sqrt(n)
    assert abs(float(jnp.mean(prod))) < 4.5 * se
  s2 = V / (V + sigma**2)
  loss = time_score_loss(_gauss_dsigma(x, sigma), jnp.zeros(n), t, sig, D)
  np.testing.assert_allclose(float(jnp.mean(loss)), s2 * (2 - s2), rtol=0.03)
  worse = time_score_loss(_gauss_dsigma(x, sigma) + 1.0 / sigma, jnp.zeros(n), t, sig, D)
  np.testing.assert_allclose(float(jnp.mean(worse - loss)), 1.0 / (2 * D), rtol=0.05)


def test_teacher_target_of_an_exact_score_is_the_exact_sigma_derivative():
  """``−σ(‖s‖² + ∇·s)`` of the exact mixture score = ``∂_σ(−log p_σ)`` (exact divergence), and
  its Hutchinson estimate is unbiased."""
  mix = toy.unequal((0.5, 0.3, 0.2), 1.5, (0.4, 0.15, 0.25))
  x, _ = gmm.sample(mix, jax.random.key(1), 64, 0.3)
  for sigma in (0.05, 0.3, 1.0):
    den = lambda z: gmm.denoiser(mix, z, sigma)
    got = jax.jit(jax.vmap(lambda z: teacher_time_target(den, z, jnp.float32(sigma), None,
                                                         0)))(x)
    want = jax.jit(jax.vmap(lambda z: jax.grad(lambda s: gmm.energy(mix, z, s))(
        jnp.float32(sigma))))(x)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 / sigma)
  sigma = 0.3
  den = lambda z: gmm.denoiser(mix, z, sigma)
  hutch = jax.jit(jax.vmap(lambda z: teacher_time_target(den, z, jnp.float32(sigma),
                                                         jax.random.key(2), 4000)))(x[:8])
  exact = jax.jit(jax.vmap(lambda z: teacher_time_target(den, z, jnp.float32(sigma), None,
                                                         0)))(x[:8])
  np.testing.assert_allclose(hutch, exact, atol=0.05 * float(jnp.max(jnp.abs(exact))))


def test_sigma_derivative_matches_a_finite_difference():
  """The JVP in σ and the fused reverse pass agree with a central difference of a learned
  energy, and the fused ``∇_x E`` is the energy's score."""
  model = EnergyModel(MLP(width=32, depth=1, emb_dim=16), 0.8)
  params = model.init(jax.random.key(0), jnp.zeros(2), jnp.ones(()))
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(1), p.shape),
                        params)   # a non-trivial h
  efn = lambda p, z, s, label=None, k=None: energy_lib.energy(model, p, z, s, label, k)
  x = jax.random.normal(jax.random.key(2), (16, 2))
  sigma = jnp.exp(jnp.linspace(-3.0, 1.5, 16))
  jvp = jax.jit(lambda p: vmap_sigma_derivative(efn, p, x, sigma, None, None))(params)
  grad_x, fused = jax.jit(lambda p: vmap_energy_grads(efn, p, x, sigma, None, None))(params)
  h = 1e-3 * sigma
  e = jax.jit(lambda s: jax.vmap(lambda z, t: efn(params, z, t))(x, s))
  fd = (e(sigma + h) - e(sigma - h)) / (2 * h)
  np.testing.assert_allclose(jvp, fd, rtol=2e-2, atol=2e-2 * float(jnp.max(jnp.abs(fd))) / 10)
  np.testing.assert_allclose(fused, jvp, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(jvp))))
  score = jax.jit(jax.vmap(lambda z, s: energy_lib.score(model, params, z, s)))(x, sigma)
  np.testing.assert_allclose(grad_x, -score, rtol=1e-5, atol=1e-5)


def test_time_term_off_is_the_plain_loss_and_on_adds_its_aux():
  mix = toy.unequal()
  sd = gmm.data_std(mix)
  model = EnergyModel(MLP(width=16, depth=1, emb_dim=8), sd)
  params = model.init(jax.random.key(0), jnp.zeros(2), jnp.ones(()))
  gauge = Gauge(8)
  denoise = lambda p, x, s, label=None: energy_lib.denoiser(model, p, x, s, label)
  teacher = lambda x, s, label=None: gmm.denoiser(mix, x, s)
  efn = functools.partial(energy_lib.energy, model)
  batch = {"x": gmm.sample(mix, jax.random.key(1), 32)[0]}
  plain = jax.jit(make_distill_loss(denoise, teacher, sd))(params, batch, jax.random.key(2))
  off = jax.jit(make_distill_loss(denoise, teacher, sd, time_weight=0.0, student_energy_fn=efn,
                                  gauge_fn=lambda p, s: 0.0))(params, batch, jax.random.key(2))
  assert jax.tree.map(lambda a, b: bool(jnp.all(a == b)), plain, off) == jax.tree.map(
      lambda a: True, plain)
  with_gauge = {**params, "gauge": gauge.init(jax.random.key(3), jnp.ones(()))}
  assert float(gauge.apply(with_gauge["gauge"], 0.3)) == 0.0   # b starts at 0.
  loss, aux = jax.jit(make_distill_loss(denoise, teacher, sd, time_weight=2.0,
                                        student_energy_fn=efn,
                                        gauge_fn=lambda p, s: gauge.apply(p["gauge"], s)))(
      with_gauge, batch, jax.random.key(2))
  np.testing.assert_allclose(aux["loss"], plain[1]["loss"], rtol=1e-5)   # same denoiser.
  np.testing.assert_allclose(loss, jnp.mean(aux["loss"] + 2.0 * aux["time_loss"]), rtol=1e-6)


def test_diagnostics_vanish_on_exact_energies_and_see_a_level_error():
  """An exact mixture energy plus any gauge ``c(σ)``: zero residual spread and level error; the
  same energy with a mode-dependent offset has a level error of that offset."""
  mix = toy.unequal((0.5, 0.3, 0.2), 1.5, (0.4, 0.15, 0.25))
  exact = lambda x, s: gmm.energy(mix, x, s) + 3.0 * s**2 + 1.0
  diag = jax.jit(lambda k: time_consistency.mixture_diagnostics(exact, mix, k, per_component=64))(
      jax.random.key(0))
  for s in time_consistency.DEFAULT_SIGMAS:
    assert float(diag[f"heat_residual_std/sigma_{s:g}"]) < 0.02, diag
    assert float(diag[f"heat_residual_mode_spread/sigma_{s:g}"]) < 0.02, diag
    assert float(diag[f"level_error/sigma_{s:g}"]) < 1e-3, diag
  bumped = lambda x, s: exact(x, s) + jnp.tanh(4 * x[0])   # modes at x₀ = 1.5, −0.75, −0.75.
  diag = jax.jit(lambda k: time_consistency.mixture_diagnostics(bumped, mix, k, (0.05,), 64))(
      jax.random.key(0))
  assert 1.5 < float(diag["level_error/sigma_0.05"]) < 2.05
  spread = jax.jit(lambda x0, k: time_consistency.residual_spread(exact, x0, k, (0.1, 1.0)))(
      gmm.sample(mix, jax.random.key(3), 128)[0], jax.random.key(4))
  assert all(float(v) < 0.02 for v in spread.values())
  x = jnp.array([0.3, -0.2])
  keys = jax.random.split(jax.random.key(5), 2000)
  hutch = jax.jit(jax.vmap(lambda k: time_consistency.heat_residual(bumped, x, 0.3, k, 4)))(keys)
  exact_r = jax.jit(lambda z: time_consistency.heat_residual(bumped, z, 0.3))(x)
  np.testing.assert_allclose(float(jnp.mean(hutch)), float(exact_r), atol=0.05)


@pytest.mark.slow   # a training run
def test_short_training_reduces_the_residual_spread_between_modes():
  """Distilling the exact `unequal` score into a small fresh energy: with the time term
  (teacher target) the heat residual's spread between modes at small σ is far below plain."""
  mix = toy.unequal((0.5, 0.3, 0.2), 1.5, (0.4, 0.15, 0.25))
  sd = gmm.data_std(mix)
  model = EnergyModel(MLP(width=32, depth=2, emb_dim=16), sd)
  gauge = Gauge(16)
  params = model.init(jax.random.key(0), jnp.zeros(2), jnp.ones(()))
  denoise = lambda p, x, s, label=None: energy_lib.denoiser(model, p, x, s, label)
  teacher = lambda x, s, label=None: gmm.denoiser(mix, x, s)
  batches = lambda key: {"x": gmm.sample(mix, key, 256)[0]}
  plain = make_distill_loss(denoise, teacher, sd)
  timed = make_distill_loss(denoise, teacher, sd, time_weight=1.0,
                            student_energy_fn=functools.partial(energy_lib.energy, model),
                            gauge_fn=lambda p, s: gauge.apply(p["gauge"], s),
                            time_target="teacher", time_probes=0)
  p_plain, _ = fit(plain, params, batches, jax.random.key(1), 400, 2e-3)
  p_timed, _ = fit(timed, {**params, "gauge": gauge.init(jax.random.key(2), jnp.ones(()))},
                   batches, jax.random.key(1), 400, 2e-3)
  sigmas = (0.05, 0.1)
  diag = lambda p: jax.jit(lambda k: time_consistency.mixture_diagnostics(
      lambda x, s: energy_lib.energy(model, p, x, s), mix, k, sigmas, 128))(jax.random.key(3))
  a, b = diag(p_plain), diag(p_timed)
  for s in sigmas:
    key = f"heat_residual_mode_spread/sigma_{s:g}"
    assert float(b[key]) < 0.3 * float(a[key]), (a, b)


@pytest.mark.slow   # a whole training run, then its resume
def test_production_run_with_the_time_term_writes_diagnostics_and_resumes(tmp_path):
  """``distill.time_weight > 0`` through ``train_and_evaluate``: the gauge's parameters sit
  beside the energy's in the checkpoint, a run resumes, and the evaluation reports the heat
  diagnostics (as every toy energy run does)."""
  from fkdiff.training import train_and_evaluate
  from fkdiff.training.checkpoint import load_run
  train_and_evaluate(tiny_teacher_config(num_steps=10), str(tmp_path / "teacher"))
  c = tiny_teacher_config(num_steps=6, checkpoint_every=3, log_every=3)
  c.task = "distill"
  c.teacher.workdir = str(tmp_path / "teacher")
  c.teacher.log_asymmetry = False
  c.distill.time_weight = 1.0
  c.eval.num_samples = 64
  c.eval.time_points = 8
  c.eval.time_sigmas = (0.1, 1.0)
  out = tmp_path / "student"
  train_and_evaluate(c, str(out))
  _, tree, step = load_run(str(out))
  assert step == 6 and "gauge" in tree["params"] and "backbone" in tree["params"]["params"]
  c.training.num_steps = 9
  results = train_and_evaluate(c, str(out))
  assert results["step"] == 9
  saved = json.loads((out / "eval.json").read_text())
  for key in ("heat_residual_mode_spread/sigma_0.1", "level_error/sigma_1"):
    assert np.isfinite(saved[key])
  bad = tiny_teacher_config()
  bad.distill.time_target = "tweedie"
  with pytest.raises(ValueError, match="time_target"):
    train_and_evaluate(bad, str(tmp_path / "bad"))
