"""Toy figures: the view is fitted to the exact target's support, and the figures draw cleanly."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkdiff.data import gmm as gmm_lib, toy
from fkdiff.evaluation import grid as grid_lib, plots
from fkdiff.experiments import toy2d


def _box_mass(grid, box):
  """Exact mass of a tabulated density inside ``box = (x_lo, x_hi, y_lo, y_hi)``."""
  x, y = np.asarray(grid.points[:, 0]), np.asarray(grid.points[:, 1])
  inside = (x >= box[0]) & (x <= box[1]) & (y >= box[2]) & (y <= box[3])
  return float(np.sum(np.exp(np.asarray(grid.log_p))[inside]) * grid.cell**2)


def _draw(grid, title, path, sources=("exact",)):
  x = np.asarray(grid_lib.sample(grid, jax.random.key(0), 1000))
  samples = {(title, "a", s): (x, None) for s in sources}
  # ("b", "learned") left out: a method not run on a source is a blank panel.
  samples[(title, "b", "exact")] = (x + 0.3, None)
  return plots.problem_figure(str(path), title, grid, samples, ("a", "b"), sources)


def test_the_view_of_a_gaussian_is_the_disk_holding_its_mass(tmp_path):
  """N(μ, s² I) on a wide grid: its 99.9% highest-density region is the disk of radius
  r = s √(−2 ln 0.001) = 3.72 s around μ; the drawn square holds it with a 10% margin a side."""
  mu, s = np.array([1.0, -0.5]), 0.3
  gauss = gmm_lib.GaussianMixture(jnp.ones(1), jnp.asarray(mu[None], jnp.float32),
                                  s**2 * jnp.eye(2)[None])
  grid = grid_lib.tabulate(lambda x: gmm_lib.log_prob(gauss, x), 6.0, 400)
  box = _draw(grid, "gauss", tmp_path / "gauss.png")
  r = s * np.sqrt(-2 * np.log(1e-3))
  np.testing.assert_allclose([(box[0] + box[1]) / 2, (box[2] + box[3]) / 2], mu, atol=grid.cell)
  for lo, hi in (box[:2], box[2:]):
    assert 2 * r < hi - lo < 1.2 * 2 * (r + grid.cell), (box, r)
  assert _box_mass(grid, box) > 0.999
  assert (tmp_path / "gauss.png").stat().st_size > 0


@pytest.mark.parametrize("problem", ["product", "low_temperature"])
def test_the_toy_job_figures_show_the_target_support_not_the_whole_grid(problem, tmp_path):
  """The job's own targets (configs/toy2d.py's mixtures, σ_K = 0.01): the view holds ≥ 99.9% of
  the exact mass, and the same square shrunk to 3/4 of its side no longer does, so it is not even
  4/3 too wide (the whole grid, drawn before, is ~2.8× too wide for the product)."""
  kw = {"ring": {"num_modes": 8, "radius": 2.0, "std": 0.2},
        "bar": {"separation": 2.4, "long_std": 1.5, "short_std": 0.2, "weights": (0.7, 0.3)},
        "unequal": {"weights": (0.5, 0.3, 0.2), "radius": 1.5, "std": (0.4, 0.15, 0.25)}}
  m = {name: toy.get_mixture(name, **k) for name, k in kw.items()}
  if problem == "product":
    truth = toy2d.product_truth(m["ring"], m["bar"], 0.01, 200)
  else:
    truth = toy2d.tempered_truth(m["unequal"], 3.0, 0.01, 200)
  box = _draw(truth.grid, problem, tmp_path / f"{problem}.png", sources=("learned", "exact"))
  assert _box_mass(truth.grid, box) > 0.999
  centre, half = np.array([box[0] + box[1], box[2] + box[3]]) / 2, (box[1] - box[0]) / 2
  assert box[3] - box[2] == pytest.approx(2 * half)   # square: one scale on both axes.
  smaller = 0.75 * half
  assert _box_mass(truth.grid, (centre[0] - smaller, centre[0] + smaller, centre[1] - smaller,
                                centre[1] + smaller)) < 0.999, box


def test_mass_levels_enclose_the_given_mass():
  density = np.exp(-0.5 * np.linspace(-5, 5, 1001)**2)
  for mass, level in zip((0.5, 0.9, 0.99), plots.mass_levels(density, (0.5, 0.9, 0.99))):
    held = density[density >= level].sum() / density.sum()
    assert mass <= held < mass + 0.005, (mass, held)


def test_the_ess_figure_without_smc_runs_draws_without_warnings(tmp_path):
  """No SMC method (no ESS path): a note in place of an empty legend (which warned)."""
  runs = {("product", "naive", "exact"): (np.zeros((4, 2)), None)}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    plots.ess_figure(str(tmp_path / "ess.png"), runs, np.geomspace(10, 0.01, 5))
    runs["product", "smc_score", "exact"] = (np.zeros((4, 2)), np.linspace(1, 0.5, 4))
    plots.ess_figure(str(tmp_path / "ess.png"), runs, np.geomspace(10, 0.01, 5))
  assert (tmp_path / "ess.png").stat().st_size > 0
