"""Gaussian mixtures with exact diffused energies and scores (METHOD.md §5).

A mixture ``p_0 = Σ_k w_k N(μ_k, Σ_k)`` noised as ``x_σ = x_0 + σ ε`` has the closed form
``p_σ = Σ_k w_k N(μ_k, Σ_k + σ² I)``. This module is the ground truth that the rest of the
library is tested against: energies ``E(x, σ) = −log p_σ(x)`` (normalised, so absolute values are
meaningful), scores, denoisers, sampling, component responsibilities (mode masses), the exact
normalised product of two mixtures, and label-conditional mixtures fitted to labelled data
(:func:`fit_by_label`, :func:`label_energy`: a closed-form stand-in for a class-conditional model).

Per-example functions take ``x`` of shape ``(d,)`` and a scalar ``σ`` and are meant to be vmapped.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class GaussianMixture(NamedTuple):
  """A mixture of ``K`` Gaussians in ``d`` dimensions.

  Attributes:
    weights: ``(K,)`` mixture weights, positive, summing to one.
    means: ``(K, d)`` component means.
    covs: ``(K, d, d)`` component covariances (symmetric positive definite).
  """
  weights: Array
  means: Array
  covs: Array

  @property
  def dim(self) -> int:
    return self.means.shape[-1]

  @property
  def num_components(self) -> int:
    return self.means.shape[0]


def make_mixture(weights, means, covs) -> GaussianMixture:
  """Builds a validated mixture; ``covs`` may be ``(K,d,d)``, ``(K,d)`` (diagonal) or ``(K,)``.

  Raises:
    ValueError: on inconsistent shapes, non-positive weights or non-PD covariances.
  """
  means = np.asarray(means, np.float64)
  if means.ndim != 2:
    raise ValueError(f"means must be (K, d), got shape {means.shape}.")
  k, d = means.shape
  weights = np.asarray(weights, np.float64)
  if weights.shape != (k,):
    raise ValueError(f"weights must be ({k},) to match means, got {weights.shape}.")
  if np.any(weights <= 0):
    raise ValueError(f"weights must be positive, got {weights}.")
  covs = np.asarray(covs, np.float64)
  if covs.shape == (k,):
    covs = covs[:, None, None] * np.eye(d)
  elif covs.shape == (k, d):
    covs = np.einsum("ki,ij->kij", covs, np.eye(d))
  elif covs.shape != (k, d, d):
    raise ValueError(f"covs must be ({k},), ({k},{d}) or ({k},{d},{d}), got {covs.shape}.")
  if not np.allclose(covs, np.swapaxes(covs, -1, -2)):
    raise ValueError("covariances must be symmetric.")
  if np.any(np.linalg.eigvalsh(covs) <= 0):
    raise ValueError("covariances must be positive definite.")
  return GaussianMixture(jnp.asarray(weights / weights.sum(), jnp.float32),
                         jnp.asarray(means, jnp.float32), jnp.asarray(covs, jnp.float32))


def diffuse(gmm: GaussianMixture, sigma) -> GaussianMixture:
  """The mixture of ``x_σ = x_0 + σ ε``: each covariance gets ``+ σ² I``."""
  eye = jnp.eye(gmm.dim, dtype=gmm.covs.dtype)
  return gmm._replace(covs=gmm.covs + jnp.asarray(sigma)**2 * eye)


def _component_log_probs(gmm: GaussianMixture, x: Array) -> Array:
  """``log w_k + log N(x; μ_k, Σ_k)`` for every component; ``x`` is ``(d,)``, returns ``(K,)``."""
  if x.shape != gmm.means.shape[1:]:
    raise ValueError(f"this Gaussian mixture is {gmm.means.shape[1]}-dimensional: x must have "
                     f"shape {gmm.means.shape[1:]} (one example), got {x.shape}.")
  chol = jnp.linalg.cholesky(gmm.covs)                              # (K, d, d)
  diff = x[None, :] - gmm.means                                     # (K, d)
  z = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
  log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
  log_norm = -0.5 * (gmm.dim * jnp.log(2 * jnp.pi) + log_det)
  return jnp.log(gmm.weights) + log_norm - 0.5 * jnp.sum(z**2, axis=-1)


def log_prob(gmm: GaussianMixture, x: Array) -> Array:
  """``log p(x)`` for one point ``x`` of shape ``(d,)``; returns a scalar."""
  return jax.nn.logsumexp(_component_log_probs(gmm, x))


def responsibilities(gmm: GaussianMixture, x: Array) -> Array:
  """Posterior component probabilities ``p(k | x)``, shape ``(K,)``."""
  return jax.nn.softmax(_component_log_probs(gmm, x))


def diagonal_energy(weights, means, variances) -> Callable[[Array, Array], Array]:
  """``E(x, σ) = −log Σ_k w_k Π_j N(x_j; μ_kj, v_kj + σ²)``, the exact diffused energy
  (normalised) of a mixture with diagonal covariances, in O(K d) per point (no Cholesky factor):
  high-dimensional ground truth. ``weights (K,)`` (normalised here), ``means (K, d)``,
  ``variances (K,)`` (isotropic components) or ``(K, d)``."""
  log_w = jnp.log(jnp.asarray(weights, jnp.float32) / jnp.sum(jnp.asarray(weights, jnp.float32)))
  mu = jnp.asarray(means, jnp.float32)
  v0 = jnp.broadcast_to(jnp.asarray(variances, jnp.float32).reshape(mu.shape[0], -1), mu.shape)

  def energy_fn(x, sigma):
    v = v0 + sigma**2
    return -jax.nn.logsumexp(log_w - 0.5 * jnp.sum((x - mu)**2 / v + jnp.log(2 * jnp.pi * v), -1))
  return energy_fn


class EigenMixture(NamedTuple):
  """A label-conditional mixture with its components in their eigenbases (:func:`eigen`): exact
  diffused energies in O(K d²) per point, no factorisation per call. ``log_weights (K,)``,
  ``means (K, d)``, ``basis (K, d, d)`` (columns: eigenvectors of ``Σ_k``), ``eig (K, d)`` (their
  eigenvalues), ``labels (K,)`` (each component's label)."""
  log_weights: Array
  means: Array
  basis: Array
  eig: Array
  labels: Array


def eigen(gmm: GaussianMixture, labels=None) -> EigenMixture:
  """``gmm`` with each covariance eigendecomposed (float64 on the host, stored float32);
  ``labels (K,)`` give each component's label (default: component k has label k)."""
  eig, basis = np.linalg.eigh(np.asarray(gmm.covs, np.float64))
  labels = np.arange(gmm.num_components) if labels is None else np.asarray(labels)
  if labels.shape != (gmm.num_components,):
    raise ValueError(f"labels must be ({gmm.num_components},), got shape {labels.shape}.")
  return EigenMixture(jnp.log(gmm.weights), gmm.means, jnp.asarray(basis, jnp.float32),
                      jnp.asarray(eig, jnp.float32), jnp.asarray(labels, jnp.int32))


def fit_by_label(x, labels, num_labels: int, ridge: float = 0.0, components: int = 1,
                 seed: int = 0):
  """A label-conditional mixture fitted to ``x (N, ...)`` (flattened to ``(N, d)``):
  ``components`` Gaussians per label (one: the label's mean and unbiased covariance; more:
  scikit-learn's EM, ``GaussianMixture``, seeded), each covariance plus ``ridge · I``; a
  component's weight is its label's frequency times its weight within the label.

  Returns:
    ``(mixture, component_labels (K,))``, ``K = num_labels · components``, label-major.
  Raises:
    ValueError: when a label has fewer than ``max(2, components)`` points.
  """
  flat = np.asarray(x, np.float64).reshape(len(x), -1)
  labels = np.asarray(labels)
  counts = np.array([np.sum(labels == c) for c in range(num_labels)])
  if np.any(counts < max(2, components)):
    raise ValueError(f"every label needs {max(2, components)} points or more, got counts "
                     f"{counts.tolist()}.")
  eye = np.eye(flat.shape[1])
  weights, means, covs = [], [], []
  for c in range(num_labels):
    xc = flat[labels == c]
    if components == 1:
      w, mu, cov = np.ones(1), xc.mean(0)[None], (np.cov(xc, rowvar=False) + ridge * eye)[None]
    else:
      from sklearn.mixture import GaussianMixture as SkMixture
      fit = SkMixture(components, covariance_type="full", reg_covar=ridge,
                      random_state=seed).fit(xc)
      w, mu, cov = fit.weights_, fit.means_, fit.covariances_
    weights.append(counts[c] * w), means.append(mu), covs.append(cov)
  return (make_mixture(np.concatenate(weights), np.concatenate(means), np.concatenate(covs)),
          np.repeat(np.arange(num_labels), components))


def label_energy(em: EigenMixture, x: Array, sigma, label) -> Array:
  """``E(x, σ | c) = −log p_σ(x | c)``, ``p_σ(x | c)`` the mixture of label c's components
  (weights renormalised), each ``N(μ_k, Σ_k + σ² I)``; a label that no component carries (by
  convention the number of labels: the null label ∅ of classifier-free guidance) gives the
  whole mixture, ``−log p_σ(x)``. ``x (d,)``, scalar ``σ`` and ``label``."""
  z = jnp.einsum("kij,ki->kj", em.basis, x[None] - em.means)
  var = em.eig + jnp.asarray(sigma)**2
  log_n = -0.5 * jnp.sum(z**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)      # (K,)
  mine = em.labels == label
  log_w = jnp.where(jnp.any(mine), jnp.where(mine, em.log_weights, -jnp.inf), em.log_weights)
  return jax.nn.logsumexp(log_w) - jax.nn.logsumexp(log_w + log_n)


def energy(gmm: GaussianMixture, x: Array, sigma) -> Array:
  """Exact diffused energy ``E(x, σ) = −log p_σ(x)`` (normalised); ``x`` is ``(d,)``."""
  return -log_prob(diffuse(gmm, sigma), x)


def score(gmm: GaussianMixture, x: Array, sigma) -> Array:
  """Exact diffused score ``∇_x log p_σ(x)``, shape ``(d,)``.

  Computed in closed form: ``Σ_k r_k(x) (Σ_k+σ²I)^{-1} (μ_k − x)``.
  """
  g = diffuse(gmm, sigma)
  r = responsibilities(g, x)
  per_comp = jnp.linalg.solve(g.covs, (g.means - x[None, :])[..., None])[..., 0]
  return jnp.sum(r[:, None] * per_comp, axis=0)


def denoiser(gmm: GaussianMixture, x: Array, sigma) -> Array:
  """Exact posterior mean ``E[x_0 | x_σ = x] = x + σ² ∇ log p_σ(x)``."""
  return x + jnp.asarray(sigma)**2 * score(gmm, x, sigma)


def sample(gmm: GaussianMixture, key: Array, num: int, sigma=0.0):
  """Draws ``num`` samples of ``x_σ``; returns ``(samples (num, d), component ids (num,))``."""
  k_comp, k_noise = jax.random.split(key)
  comp = jax.random.categorical(k_comp, jnp.log(gmm.weights), shape=(num,))
  g = diffuse(gmm, sigma)
  chol = jnp.linalg.cholesky(g.covs)[comp]                          # (num, d, d)
  eps = jax.random.normal(k_noise, (num, gmm.dim), dtype=gmm.means.dtype)
  return g.means[comp] + jnp.einsum("nij,nj->ni", chol, eps), comp


def product(a: GaussianMixture, b: GaussianMixture):
  """The normalised product ``p_a · p_b / Z`` as a mixture of ``K_a K_b`` components.

  Uses ``N(x;m,A) N(x;n,B) = N(m; n, A+B) N(x; c, C)`` with ``C = (A⁻¹+B⁻¹)⁻¹`` and
  ``c = C (A⁻¹ m + B⁻¹ n)``.

  Returns:
    ``(mixture, log_Z)`` where ``log_Z = log ∫ p_a p_b dx``. Component ``i * K_b + j`` is the
    product of ``a``'s ``i``-th and ``b``'s ``j``-th components.
  """
  inv_a = jnp.linalg.inv(a.covs)[:, None]                           # (Ka, 1, d, d)
  inv_b = jnp.linalg.inv(b.covs)[None, :]                           # (1, Kb, d, d)
  cov = jnp.linalg.inv(inv_a + inv_b)                               # (Ka, Kb, d, d)
  mean = jnp.einsum("abij,abj->abi", cov,
                    jnp.einsum("abij,aj->abi", inv_a, a.means)
                    + jnp.einsum("abij,bj->abi", inv_b, b.means))
  overlap = jax.vmap(lambda m, ca: jax.vmap(
      lambda n, cb: log_prob(GaussianMixture(jnp.ones((1,)), n[None], (ca + cb)[None]), m)
  )(b.means, b.covs))(a.means, a.covs)                              # (Ka, Kb)
  log_w = jnp.log(a.weights)[:, None] + jnp.log(b.weights)[None, :] + overlap
  log_z = jax.nn.logsumexp(log_w)
  k, d = a.num_components * b.num_components, a.dim
  return GaussianMixture(jnp.exp(log_w - log_z).reshape(k), mean.reshape(k, d),
                         cov.reshape(k, d, d)), log_z


def mean_and_cov(gmm: GaussianMixture):
  """Exact mean ``(d,)`` and covariance ``(d, d)`` of the mixture."""
  mean = jnp.sum(gmm.weights[:, None] * gmm.means, axis=0)
  diff = gmm.means - mean
  cov = jnp.sum(gmm.weights[:, None, None]
                * (gmm.covs + jnp.einsum("ki,kj->kij", diff, diff)), axis=0)
  return mean, cov


def data_std(gmm: GaussianMixture) -> float:
  """Root-mean-square per-coordinate standard deviation: a natural σ_d for the mixture."""
  _, cov = mean_and_cov(gmm)
  return float(jnp.sqrt(jnp.trace(cov) / gmm.dim))
