"""Image-shaped Gaussian mixtures with exact answers in any dimension (METHOD.md §5, §4c).

A :class:`SpectralMixture` is ``p_0 = Σ_k w_k N(μ_k, Σ)`` over an event shape (``(2,)``,
``(8, 8)``, ``(64, 64, 3)``, …), every component sharing one covariance ``Σ = Q diag(λ) Qᵀ``
diagonal in the orthonormal DCT-II basis ``Q`` over all axes (:func:`image_spectrum`: variances
decaying with frequency, as natural images' do). The means differ only in two DCT coefficients,
the *plane* ``(z_a, z_b)`` (the DC and the first horizontal frequency). So the density factorises,

    p_σ(x) = f_σ(z_a, z_b) · Π_{j ∉ plane} N(z_j; 0, λ_j + σ²),     z = Qᵀ x,

a two-dimensional mixture times a Gaussian, and so do its tempered powers, the product of two
such mixtures and classifier-free AND targets built from them: the exact answer is a 2-D density
(evaluated on a grid, :func:`plane_reference`) times a known Gaussian, in every dimension.
Energies cost one DCT per evaluation (O(d log d)), no factorisation.

Per-example functions take ``x`` of the event shape and a scalar ``σ``.
"""

import functools
from typing import NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fkdiff.data import gmm as gmm_lib

Array = jax.Array
PLANE = (0, 1)        # flat DCT indices of the plane's two coordinates


class SpectralMixture(NamedTuple):
  """``Σ_k w_k N(μ_k, Q diag(λ) Qᵀ)`` with means in the DCT plane (module docstring).

  Attributes:
    log_weights: ``(K,)`` normalised log mixture weights.
    plane_means: ``(K, 2)`` the means' DCT coordinates ``(z_a, z_b)`` (all others 0).
    eig: event-shaped DCT-coefficient variances ``λ`` (shared by every component).
    labels: ``(K, A)`` boolean attributes of each component (``A ≥ 0``), for conditionals.
  """
  log_weights: Array
  plane_means: Array
  eig: Array
  labels: Array

  @property
  def event_shape(self) -> Tuple[int, ...]:
    return tuple(self.eig.shape)

  @property
  def dim(self) -> int:
    return int(np.prod(self.eig.shape))


def image_spectrum(event_shape: Sequence[int], data_std: float = 0.5, corner: float = 0.05,
                   floor: float = 1e-4) -> np.ndarray:
  """DCT-coefficient variances ``λ ∝ 1/(f_c² + ‖f‖²)`` (``f``: frequency per axis in cycles per
  sample, ``f_c`` = ``corner``), scaled so the mean variance is ``data_std²``, plus ``floor``:
  an image-like spectrum (power ∝ 1/f² above the corner). ``float64``, ``event_shape``."""
  shape = tuple(int(n) for n in event_shape)
  grids = np.meshgrid(*[np.arange(n) / (2.0 * n) for n in shape], indexing="ij")
  f2 = sum(g**2 for g in grids)
  lam = 1.0 / (corner**2 + f2)
  return data_std**2 * lam / lam.mean() + floor


@functools.lru_cache(maxsize=None)
def _dct_matrix(n: int) -> np.ndarray:
  """The orthonormal DCT-II matrix ``C (n, n)``, ``z = C x`` (``C⁻¹ = Cᵀ``)."""
  k, i = np.arange(n)[:, None], np.arange(n)[None, :]
  c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
  c[0] /= np.sqrt(2.0)
  return c.astype(np.float32)


def _apply_per_axis(x: Array, transpose: bool) -> Array:
  for axis, n in enumerate(x.shape):
    c = jnp.asarray(_dct_matrix(n).T if transpose else _dct_matrix(n))
    x = jnp.moveaxis(jnp.tensordot(c, x, axes=(1, axis)), 0, axis)
  return x


def dct(x: Array) -> Array:
  """Orthonormal DCT-II over every axis of one example: ``z = Qᵀ x`` (as matrix products per
  axis: faster than XLA:CPU's FFT at these sizes; equal to ``jax.scipy.fft.dctn(x, norm='ortho')``)."""
  return _apply_per_axis(x, transpose=False)


def idct(z: Array) -> Array:
  """Inverse of :func:`dct`: ``x = Q z``."""
  return _apply_per_axis(z, transpose=True)


def make(event_shape: Sequence[int], weights, plane_means, labels=None, data_std: float = 0.5,
         **spectrum) -> SpectralMixture:
  """A validated mixture; ``plane_means (K, 2)`` in units of the plane coordinates' standard
  deviations ``sqrt(λ_a), sqrt(λ_b)``; ``labels (K, A)`` booleans (default none).

  Raises:
    ValueError: on an event of fewer than 2 numbers, non-positive weights or mismatched shapes.
  """
  shape = tuple(int(n) for n in event_shape)
  if int(np.prod(shape)) < 2:
    raise ValueError(f"event_shape must hold at least 2 numbers, got {shape}.")
  w = np.asarray(weights, np.float64)
  m = np.asarray(plane_means, np.float64)
  if w.ndim != 1 or np.any(w <= 0) or m.shape != (w.shape[0], 2):
    raise ValueError(f"weights must be positive (K,) and plane_means (K, 2); got {w.shape}, "
                     f"{m.shape}.")
  lam = image_spectrum(shape, data_std, **spectrum)
  flat = lam.reshape(-1)
  m = m * np.sqrt(flat[list(PLANE)])[None]
  labels = np.zeros((w.shape[0], 0), bool) if labels is None else np.asarray(labels, bool)
  if labels.ndim != 2 or labels.shape[0] != w.shape[0]:
    raise ValueError(f"labels must be (K, A), got shape {labels.shape}.")
  return SpectralMixture(jnp.asarray(np.log(w / w.sum()), jnp.float32),
                         jnp.asarray(m, jnp.float32), jnp.asarray(lam, jnp.float32),
                         jnp.asarray(labels))


# Named stand-in layouts (:func:`layout`): ``(weights, plane means in units of separation[,
# attributes (K, A)])``. ``attributes``: six components on a 3 × 2 grid with two attributes
# (a: "right half", the grid's middle and right columns; b: "top row"), both held by two
# components: the classifier-free AND's stand-in (a class-conditional network over labels
# ``0, 1`` and the null label ``2``).
_GRID = [[i, j] for i in (-1, 0, 1) for j in (-1, 1)]
LAYOUTS = {
    "three_modes": ([0.5, 0.3, 0.2], [[-1, 0], [0, 0], [1, 0]]),   # tempering: p^β
    "split_a": ([0.7, 0.3], [[-1, 0], [1, 0]]),                     # product: p_a p_b
    "split_b": ([0.4, 0.6], [[0, -1], [0, 1]]),
    "attributes": ([0.1, 0.15, 0.2, 0.25, 0.12, 0.18], _GRID,      # AND: p(x|a) p(x|b) / p(x)
                   [[m[0] >= 0, m[1] > 0] for m in _GRID]),
}


def layout(name: str, dim=64, separation: float = 6.0, **spectrum) -> SpectralMixture:
  """A named layout of :data:`LAYOUTS` as a mixture over ``(dim,)`` numbers (or over the event
  shape ``dim`` when it is a tuple), its means ``separation`` plane standard deviations apart
  (the training data of the learned stand-ins, :mod:`fkdiff.experiments.standin`, and targets of
  the high-dimension study; ``spectrum``: :func:`image_spectrum`'s options).

  Raises:
    ValueError: on an unknown name.
  """
  if name not in LAYOUTS:
    raise ValueError(f"Unknown spectral layout {name!r}; choose one of {sorted(LAYOUTS)}.")
  weights, means, *labels = LAYOUTS[name]
  shape = tuple(dim) if isinstance(dim, (tuple, list)) else (int(dim),)
  return make(shape, weights, np.asarray(means, np.float64) * separation, *labels, **spectrum)


def num_labels(sm: SpectralMixture) -> int:
  """The number of attributes ``A``: labels ``0 … A−1`` condition on one, ``A`` is the null."""
  return int(sm.labels.shape[1])


def conditional(sm: SpectralMixture, label: Optional[int]) -> SpectralMixture:
  """``p(· | label)`` as a mixture of its own: the components holding attribute ``label``,
  weights renormalised (``None`` or the null label: ``sm`` itself)."""
  if label is None or label >= num_labels(sm):
    return sm
  keep = np.asarray(sm.labels)[:, label]
  log_w = np.asarray(sm.log_weights, np.float64)[keep]
  return SpectralMixture(jnp.asarray(log_w - np.logaddexp.reduce(log_w), jnp.float32),
                         sm.plane_means[keep], sm.eig, sm.labels[keep])


def sample_labelled(sm: SpectralMixture, key: Array, num: int) -> Tuple[Array, Array]:
  """``num`` labelled draws ``(x (num, *event_shape), label (num,))`` of a mixture with
  attributes: the label first, uniform over ``0 … A`` (``A``: the null label), then ``x`` from
  ``p(x | label)`` (the whole mixture under the null label), so that one class-conditional
  network learns every conditional and the unconditional density at once."""
  a = num_labels(sm)
  k_l, k_c, k_z = jax.random.split(key, 3)
  label = jax.random.randint(k_l, (num,), 0, a + 1)
  allowed = jnp.concatenate([sm.labels.T, jnp.ones((1, sm.labels.shape[0]), bool)])  # (A+1, K)
  logits = jnp.where(allowed[label], sm.log_weights[None], -jnp.inf)
  comp = jax.random.categorical(k_c, logits)
  return _draw(sm, k_z, comp, 0.0), label


def as_gmm(sm: SpectralMixture) -> gmm_lib.GaussianMixture:
  """The mixture as a :class:`~fkdiff.data.gmm.GaussianMixture` over the flattened event
  (``(K, d)`` means, ``(K, d, d)`` covariances ``Q diag(λ) Qᵀ``): the toy metrics' and heat
  diagnostics' ground truth (O(K d²) per point; for d ≲ 10³)."""
  d = sm.dim
  basis = np.asarray(jax.vmap(idct)(jnp.eye(d).reshape((d,) + sm.event_shape)),
                     np.float64).reshape(d, d).T                  # columns: x of each unit z
  lam = np.asarray(sm.eig, np.float64).reshape(-1)
  cov = (basis * lam) @ basis.T
  z = np.zeros((sm.plane_means.shape[0], d))
  z[:, list(PLANE)] = np.asarray(sm.plane_means, np.float64)
  return gmm_lib.make_mixture(np.exp(np.asarray(sm.log_weights, np.float64)), z @ basis.T,
                              np.broadcast_to(0.5 * (cov + cov.T), (z.shape[0], d, d)))


def _plane_and_rest(sm: SpectralMixture, x: Array, sigma) -> Tuple[Array, Array]:
  """``(z_plane (2,), ½ Σ_{rest} z²/v + ½ Σ_all log 2πv)`` of ``x`` at σ."""
  z = dct(x).reshape(-1)
  v = sm.eig.reshape(-1) + jnp.asarray(sigma)**2
  idx = jnp.asarray(PLANE)
  quad = z**2 / v
  rest = 0.5 * (jnp.sum(quad) - jnp.sum(quad[idx])) + 0.5 * jnp.sum(jnp.log(2 * jnp.pi * v))
  return z[idx], rest


def energy(sm: SpectralMixture, x: Array, sigma, label: Optional[int] = None,
           value: bool = True) -> Array:
  """``E(x, σ) = −log p_σ(x)`` (normalised), or ``−log p_σ(x | label_a)`` for ``label = a``:
  the mixture of the components whose attribute ``a`` is set (weights renormalised); ``None``
  (or the number of attributes, the null label) is the whole mixture; ``label`` is static
  (a Python int). Scalar."""
  zp, rest = _plane_and_rest(sm, x, sigma)
  v = sm.eig.reshape(-1)[jnp.asarray(PLANE)] + jnp.asarray(sigma)**2
  log_n = -0.5 * jnp.sum((zp[None] - sm.plane_means)**2 / v, axis=-1)        # (K,)
  log_w = sm.log_weights
  if label is not None and label < sm.labels.shape[1]:     # static: a Python int
    log_w = jnp.where(sm.labels[:, label], log_w, -jnp.inf)
    log_w = log_w - jax.nn.logsumexp(log_w)
  return rest - jax.nn.logsumexp(log_w + log_n)


def _draw(sm: SpectralMixture, key: Array, comp: Array, sigma) -> Array:
  """Draws of ``x_σ`` from the components ``comp (num,)``: ``(num, *event_shape)``."""
  num = comp.shape[0]
  std = jnp.sqrt(sm.eig + jnp.asarray(sigma)**2)
  z = std * jax.random.normal(key, (num,) + sm.event_shape)
  flat = z.reshape(num, -1)
  flat = flat.at[:, jnp.asarray(PLANE)].add(sm.plane_means[comp])
  return jax.vmap(idct)(flat.reshape(z.shape))


def sample(sm: SpectralMixture, key: Array, num: int, sigma=0.0) -> Tuple[Array, Array]:
  """``num`` draws of ``x_σ``: ``(samples (num, *event_shape), component ids (num,))``."""
  k_c, k_z = jax.random.split(key)
  comp = jax.random.categorical(k_c, sm.log_weights, shape=(num,))
  return _draw(sm, k_z, comp, sigma), comp


def sample_components(sm: SpectralMixture, key: Array, num: int, sigma=0.0) -> Array:
  """``num`` draws of every component diffused to σ: ``(K, num, *event_shape)``."""
  k = sm.plane_means.shape[0]
  std = jnp.sqrt(sm.eig + jnp.asarray(sigma)**2)
  z = (std * jax.random.normal(key, (k, num) + sm.event_shape)).reshape(k, num, -1)
  z = z.at[:, :, jnp.asarray(PLANE)].add(sm.plane_means[:, None])
  return jax.vmap(jax.vmap(idct))(z.reshape((k, num) + sm.event_shape))


def coordinates(x: Array) -> Array:
  """DCT coordinates of a batch ``(N, *event_shape) -> (N, d)``."""
  return jax.vmap(lambda xi: dct(xi).reshape(-1))(x)


class PlaneReference(NamedTuple):
  """The exact answer of a target built from spectral mixtures (:func:`plane_reference`).

  Attributes:
    mode_centres: ``(M, 2)`` plane points; a sample's mode is the nearest centre.
    mode_masses: ``(M,)`` exact probability of each mode's (nearest-centre) cell.
    plane_mean, plane_var: ``(2,)`` exact mean and variance of ``(z_a, z_b)``.
    rest_var: ``(d,)`` exact variances of every DCT coordinate (the plane's included), mean 0
      outside the plane.
  """
  mode_centres: np.ndarray
  mode_masses: np.ndarray
  plane_mean: np.ndarray
  plane_var: np.ndarray
  rest_var: np.ndarray


def _plane_log_density(parts, coefs, sigma, za, zb, eig_plane):
  """``Σ_i c_i log f_{i,σ}(z_a, z_b)`` on a grid: each part's plane mixture (parts are
  ``(log_weights (K,), means (K, 2))``)."""
  v = eig_plane + sigma**2
  total = 0.0
  for (log_w, mu), c in zip(parts, coefs):
    q = ((za[..., None] - mu[:, 0])**2 / v[0] + (zb[..., None] - mu[:, 1])**2 / v[1])
    comp = log_w - 0.5 * q - 0.5 * np.log(4 * np.pi**2 * v[0] * v[1])
    mx = comp.max(-1, keepdims=True)
    total = total + c * (mx[..., 0] + np.log(np.exp(comp - mx).sum(-1)))
  return total


def condition_parts(sm: SpectralMixture, label: Optional[int]):
  """``(log_weights, plane_means)`` of ``p(·| label)`` (float64, renormalised; the components of
  :func:`conditional`)."""
  c = conditional(sm, label)
  return np.asarray(c.log_weights, np.float64), np.asarray(c.plane_means, np.float64)


def plane_reference(parts, coefs, sigma: float, eig, mode_centres, points: int = 801,
                    width: float = 12.0) -> PlaneReference:
  """The exact answer for ``U = Σ_i c_i E_i(·, σ)``, each ``E_i`` a spectral mixture's energy
  (all on one spectrum ``eig``) given as plane ``parts`` (:func:`condition_parts`), ``Σ c_i > 0``.

  Outside the plane every ``E_i`` is the same Gaussian ``N(0, λ + σ²)``, so the target there is
  ``N(0, (λ + σ²)/Σ c_i)``; in the plane its density ``∝ exp(Σ c_i log f_i)`` is integrated on a
  ``points × points`` grid spanning ``± width`` standard deviations (of ``λ + σ²``) around the
  means' range (quadrature error far below sampling error at the default).
  """
  eig = np.asarray(eig, np.float64).reshape(-1)
  s = float(np.sum(coefs))
  if not s > 0:
    raise ValueError(f"the coefficients must sum to > 0, got {s}.")
  ep = eig[list(PLANE)]
  std = np.sqrt(ep + sigma**2)
  mus = np.concatenate([p[1] for p in parts])
  axes = [np.linspace(mus[:, i].min() - width * std[i], mus[:, i].max() + width * std[i], points)
          for i in range(2)]
  za, zb = np.meshgrid(*axes, indexing="ij")
  log_f = _plane_log_density(parts, coefs, sigma, za, zb, ep)
  p = np.exp(log_f - log_f.max())
  p /= p.sum()
  centres = np.asarray(mode_centres, np.float64)
  cell = np.argmin((za[..., None] - centres[:, 0])**2 / ep[0]
                   + (zb[..., None] - centres[:, 1])**2 / ep[1], axis=-1)
  masses = np.array([p[cell == m].sum() for m in range(len(centres))])
  mean = np.array([np.sum(p * za), np.sum(p * zb)])
  var = np.array([np.sum(p * (za - mean[0])**2), np.sum(p * (zb - mean[1])**2)])
  rest = (eig + sigma**2) / s
  rest[list(PLANE)] = var
  return PlaneReference(centres, masses, mean, var, rest)


def assign_modes(z: np.ndarray, centres: np.ndarray, eig) -> np.ndarray:
  """Each sample's nearest mode centre in the plane (scaled by ``sqrt(λ)``); ``z (N, d)``."""
  ep = np.asarray(eig, np.float64).reshape(-1)[list(PLANE)]
  zp = np.asarray(z, np.float64)[:, list(PLANE)]
  return np.argmin(((zp[:, None] - centres[None])**2 / ep).sum(-1), axis=-1)
