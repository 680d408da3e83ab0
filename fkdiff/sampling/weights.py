"""Feynman–Kac weight schemes for SMC: exact-ratio, head-ratio and score-only (METHOD.md §4, §4b,
§4e).

A scheme is any object with the methods of :class:`WeightScheme` — the sampler
(:mod:`fkdiff.sampling.smc`) calls them and never asks which class it has, so a new scheme is a
new class, not an edit of the sampler. A scheme decides:

- what is evaluated at a level (:meth:`~WeightScheme.evaluate`, one example →
  :class:`Evaluation`: the target's value, the gradient the proposal descends, the scheme's rate
  and term values);
- the proposal's scale (:meth:`~WeightScheme.scales`: the start width and the kernel variance
  factor ``1/s``) and its move (:meth:`~WeightScheme.propose`, one example: the new point and the
  mean of the Gaussian kernel the exact-ratio increment uses);
- the log-weight increment of a move ``x`` (at σ_k) → ``x'`` (at σ_{k+1})
  (:meth:`~WeightScheme.log_increment`, from the two levels' evaluations and the Gaussian kernel
  terms);
- what MCMC rejuvenation can reuse (:meth:`~WeightScheme.cached_potential_and_grad`,
  :meth:`~WeightScheme.evaluation_after_mcmc`), and which settings to warn about.

**Exact ratio** (:class:`ExactRatio`, METHOD.md §4): with the proposal
``M_k(x'|x) = N(x'; x − (Δ_k/s) ∇U_k(x), (Δ_k/s) I)`` and the backward kernel
``L_k(x|x') = N(x; x', (Δ_k/s) I)``,
``log G_{k+1} = −U_{k+1}(x') + U_k(x) + log L_k(x|x') − log M_k(x'|x)``: exact for any proposal,
for any energies. As the steps shrink it becomes ``∫ r_U |dσ|`` with the heat residual
``r_U = ∂_σU − σ(ΔU − ‖∇U‖²)`` (§4b): on *learned* energies, whose ``∂_σE`` nothing trains, the
weights measure the model's residual rather than the target.

**Score only** (:class:`ScoreOnly`, Feynman–Kac correctors, Skreta et al. 2025; METHOD.md §4b and
docs/METHOD.md): for ``U = A + T`` with the diffusion part ``A = Σ_i w_i E_i`` and non-diffusion
terms ``T``, the proposal follows ``A`` only, ``x' = x − aΔ_k ∇A(x) + sqrt(aΔ_k) z`` (``a = 1``:
unscaled noise, the default; ``a = 1/s``: noise matched to the tempered target), and, assuming
each ``E_i`` satisfies the heat equation ``∂_σE = σ(ΔE − ‖∇E‖²) + c(σ)``,
``log G = ∫ σ ρ(x_σ, σ) dσ − T_{k+1}(x') + T_k(x)`` with the rate
``ρ = a‖Σ w_i ∇E_i‖² − Σ w_i ‖∇E_i‖² + (1 − a) Σ w_i ΔE_i``. No energy values enter (except in
the start weight at σ_0 and in the terms), no Laplacian for ``a = 1``. The σ-integral over
``[σ_{k+1}, σ_k]`` uses the left-point rule ``σ_k ρ_k (σ_k − σ_{k+1})`` or the trapezoid
``½(σ_k ρ_k + σ_{k+1} ρ_{k+1})(σ_k − σ_{k+1})`` (both need one evaluation per level; the left
rule is the default: measured more accurate with unit noise, docs/METHOD.md).
The estimate ``Σ log mean w`` then omits the σ-only constants, so ``log Ẑ`` is not reported (NaN).

**Head ratio** (:class:`HeadRatio`, docs/METHOD.md §4e): the exact ratio with the proposal's
drift from the score heads of two-headed networks (one forward pass per level, no gradient);
``ScoreOnly(scores='heads')`` is the score-only scheme on those heads' scores.

All schemes start from ``x ~ N(0, (σ_0² + σ_d²)/s I)`` with the exact importance weight
``log w = −U_0(x) − log N(x; 0, (σ_0² + σ_d²)/s I)``: energies compared at one σ, where the gauge
cancels and no residual enters.
"""

from typing import Callable, NamedTuple, Optional, Protocol, Sequence, Tuple

import jax
import jax.numpy as jnp

from fkdiff.sampling.targets import Target

Array = jax.Array


class Evaluation(NamedTuple):
  """What a scheme evaluates for one particle at one level (batched: a leading particle axis).

  Attributes:
    potential: ``U(x, σ)``, the whole target (for MCMC, the start and the exact ratio).
    grad: the gradient the proposal descends: ``∇U`` (exact ratio), ``∇A`` (score only).
    rate: score only: ``ρ(x, σ)``; 0 for the exact ratio.
    terms: score only: ``T(x, σ)``, the non-diffusion terms; 0 for the exact ratio.
  """
  potential: Array
  grad: Array
  rate: Array
  terms: Array


class WeightScheme(Protocol):
  """What :mod:`fkdiff.sampling.smc` needs of a weight scheme (all per example unless said).

  Attributes:
    estimates_log_z: whether ``Σ log mean w`` is ``log Ẑ`` (else the result's ``log_Z`` is NaN).
    last_level_needs_gradient: whether :meth:`log_increment` reads more of the σ_K evaluation
      than its potential and terms (if not, the driver skips the gradients at σ_K).
  """
  estimates_log_z: bool
  last_level_needs_gradient: bool

  def check(self, event_shape: Optional[Sequence[int]] = None) -> None:
    """Raises ValueError for invalid settings (``event_shape``: to check callables on)."""

  def scales(self, target: Target) -> Tuple[Array, Array]:
    """``(start scale, kernel scale)``: start ``N(0, (σ_0² + σ_d²)/s)``, kernels ``Δ/s``."""

  def evaluations_per_level(self, size: int) -> int:
    """Energy evaluations per particle and level on ``size`` numbers per example (value and
    gradient count as one, a Hessian-vector product as two): what NFE counts report. Not called
    by the sampler."""

  def evaluate(self, target: Target, x: Array, sigma: Array,
               key: Optional[Array] = None) -> Evaluation:
    """The evaluation of one particle at σ (``key``: shared by the particles of a level)."""

  def propose(self, target: Target, x: Array, evaluation: Evaluation, noise: Array, var: Array,
              sigma: Array) -> Tuple[Array, Array]:
    """``(x', mean)`` for one particle: its new point given ``noise = sqrt(var) z``, and the
    mean of the Gaussian kernel ``N(x'; mean, var I)`` that the kernel ratio handed to
    :meth:`log_increment` is computed with."""

  def log_increment(self, old: Evaluation, new: Evaluation, log_kernel_ratio: Array,
                    sigma: Array, sigma_next: Array) -> Array:
    """``(N,)`` log-weight increments of the moves σ_k → σ_{k+1} (batched evaluations)."""

  def cached_potential_and_grad(self, target: Target,
                                evaluation: Evaluation) -> Optional[Tuple[Array, Array]]:
    """``(U, ∇U)`` of the whole target from an evaluation, if it holds them (MCMC starts from
    them), else None (the sampler evaluates them)."""

  def evaluation_after_mcmc(self, evaluation: Evaluation, potential: Array,
                            grad: Array) -> Optional[Evaluation]:
    """The evaluation of particles moved by MCMC from their ``(U, ∇U)``, if that is all it
    needs, else None (the sampler re-evaluates them)."""

  def setting_warnings(self, scale: Optional[float], size: int) -> list:
    """Messages about settings known not to sample a target of ``scale`` (None: traced) in
    ``size`` numbers per example (called above ``smc.HIGH_DIMENSION`` only)."""


class ExactRatio(NamedTuple):
  """Exact-ratio weights (METHOD.md §4); exact for any energies and any step.

  Attributes:
    scale: the kernel scale ``s`` (start ``N(0, (σ_0² + σ_d²)/s)``, kernels of variance
      ``Δ_k/s``); default the target's :attr:`~fkdiff.sampling.targets.Target.scale`. ``s = 1`` is
      METHOD.md §4 as written; the matching ``s`` keeps the weights of a β-tempered target from
      degenerating in high dimension (ESS ≈ N·(4/√7)^(−d) at the start for β = 4 and ``s = 1``).
    drift: optional per-example proposal drift ``b(x, σ) -> like x`` (default ``−∇U``); the
      weights stay exact.
  """
  scale: Optional[float] = None
  drift: Optional[Callable[[Array, Array], Array]] = None
  estimates_log_z = True
  last_level_needs_gradient = True

  def check(self, event_shape: Optional[Sequence[int]] = None) -> None:
    if isinstance(self.scale, (int, float)) and not self.scale > 0:
      raise ValueError(f"ExactRatio.scale must be > 0, got {self.scale}.")
    if self.drift is not None and event_shape is not None:
      check_per_example("drift", self.drift, event_shape, tuple(event_shape))

  def scales(self, target: Target) -> Tuple[Array, Array]:
    """``(start scale, kernel scale)``."""
    s = target.scale if self.scale is None else jnp.asarray(self.scale, jnp.float32)
    return s, s

  def evaluations_per_level(self, size: int) -> int:
    """Energy evaluations per particle and level (value and gradient count as one)."""
    return 1

  def evaluate(self, target: Target, x: Array, sigma: Array,
               key: Optional[Array] = None) -> Evaluation:
    u, g = jax.value_and_grad(target)(x, sigma)
    zero = jnp.zeros_like(u)
    return Evaluation(u, g, zero, zero)

  def propose(self, target: Target, x: Array, evaluation: Evaluation, noise: Array, var: Array,
              sigma: Array) -> Tuple[Array, Array]:
    """Euler–Maruyama, ``x' = x + var b(x) + noise`` with ``b = −∇U`` or :attr:`drift`."""
    drift = -evaluation.grad if self.drift is None else self.drift(x, sigma)
    mean = x + var * drift
    return mean + noise, mean

  def log_increment(self, old: Evaluation, new: Evaluation, log_kernel_ratio: Array,
                    sigma: Array, sigma_next: Array) -> Array:
    """``−U_{k+1}(x') + U_k(x) + log L_k(x|x') − log M_k(x'|x)``; ``(N,)``."""
    return -new.potential + old.potential + log_kernel_ratio

  def cached_potential_and_grad(self, target: Target, evaluation: Evaluation):
    return evaluation.potential, evaluation.grad

  def evaluation_after_mcmc(self, evaluation: Evaluation, potential: Array, grad: Array):
    return Evaluation(potential, grad, evaluation.rate, evaluation.terms)

  def setting_warnings(self, scale: Optional[float], size: int) -> list:
    return []


class HeadRatio(NamedTuple):
  """Exact-ratio weights with the proposal from the energies' score heads (docs/METHOD.md §4e):
  one forward pass per particle and level, no gradient of any energy.

  Each energy of the target that has a score head (``value_and_score``: a two-headed network,
  :class:`fkdiff.models.HeadEnergy`) gives its value ``E_i`` and its head's score ``ŝ_i`` from
  one pass; others give ``E_i`` and ``−∇E_i``. The proposal is Euler–Maruyama with the drift
  ``b = Σ_i w_i ŝ_i − ∇T`` (the terms' own gradients, if any),
  ``x' = x + (Δ_k/s) b(x) + sqrt(Δ_k/s) z``, and the increment is :class:`ExactRatio`'s,
  ``−U_{k+1}(x') + U_k(x) + log L_k(x|x') − log M_k(x'|x)`` with ``U`` from the energy values:
  exact for any drift, so whatever the score head and the energy head disagree on is corrected,
  and ``log Ẑ`` is estimated. On energies without score heads it is :class:`ExactRatio`.

  Attributes:
    scale: the kernel scale ``s`` (as :attr:`ExactRatio.scale`; default the target's).
  """
  scale: Optional[float] = None
  estimates_log_z = True
  last_level_needs_gradient = False    # the increment reads the potentials only

  def check(self, event_shape: Optional[Sequence[int]] = None) -> None:
    ExactRatio(self.scale).check(event_shape)

  def scales(self, target: Target) -> Tuple[Array, Array]:
    return ExactRatio(self.scale).scales(target)

  def evaluations_per_level(self, size: int) -> int:
    """One network evaluation per particle and level (a forward pass)."""
    return 1

  def evaluate(self, target: Target, x: Array, sigma: Array,
               key: Optional[Array] = None) -> Evaluation:
    u, drift = target.potential_and_drift(x, sigma)
    zero = jnp.zeros_like(u)
    return Evaluation(u, -drift, zero, zero)

  def propose(self, target: Target, x: Array, evaluation: Evaluation, noise: Array, var: Array,
              sigma: Array) -> Tuple[Array, Array]:
    """Euler–Maruyama along the heads' drift, ``x' = x + var b(x) + noise``."""
    return ExactRatio().propose(target, x, evaluation, noise, var, sigma)

  def log_increment(self, old: Evaluation, new: Evaluation, log_kernel_ratio: Array,
                    sigma: Array, sigma_next: Array) -> Array:
    return -new.potential + old.potential + log_kernel_ratio

  def cached_potential_and_grad(self, target: Target, evaluation: Evaluation):
    return None     # its drift is not ∇U: MCMC evaluates the energies' gradients itself

  def evaluation_after_mcmc(self, evaluation: Evaluation, potential: Array, grad: Array):
    return None     # the moved particles' score heads are evaluated again

  def setting_warnings(self, scale: Optional[float], size: int) -> list:
    return []


class ScoreOnly(NamedTuple):
  """Score-only (Feynman–Kac corrector) weights (METHOD.md §4b): no residual, no energy values.

  Attributes:
    rule: ``'left'`` (default) or ``'trapezoid'``: the quadrature of ``∫ σ ρ dσ`` per step.
      Both converge at first order with the Euler–Maruyama proposal; with unit noise the left
      rule's error was about half the trapezoid's at 25–100 levels
      (``benchmarks/score_only_rules.py``), so it is the default.
    noise: ``'unit'`` (default: ``a = 1``, no Laplacian) or ``'matched'`` (``a = 1/s``, the
      proposal of a tempered target; the rate then needs ``ΔA``).
    laplacian: how ``ΔA`` is computed for matched noise: ``'auto'`` (default: ``'exact'`` for
      events of at most ``EXACT_LAPLACIAN_MAX_SIZE`` numbers, else ``'hutchinson'``),
      ``'exact'`` (one Hessian-vector product per coordinate: small event sizes only) or
      ``'hutchinson'`` (``probes`` Rademacher probes
      ``v``, ``vᵀ∇²A v``, **the same probes for every particle** at a level: each particle's
      estimate is unbiased, and particles whose Hessians agree get the same estimate, so the
      relative weights carry noise of the Hessians' *differences* only; docs/METHOD.md §4c).
    probes: number of Hutchinson probes per level.
    scores: ``'gradients'`` (default: ``∇E_i`` by autodiff) or ``'heads'``: each energy's own
      score head where it has one (``value_and_score``, a two-headed network,
      :class:`fkdiff.models.HeadEnergy`; docs/METHOD.md §4e) in the rate and the proposal — one
      forward pass per level, no gradient (unit noise and the Euler proposal only).
    proposal: ``'euler'`` (default: ``x' = x − aΔ∇A(x) + sqrt(aΔ) z``) or ``'shaped'``: the drift
      averaged over ``x`` and the noise-displaced point, ``x' = x + sqrt(aΔ) z −
      (aΔ/2)(∇A(x) + ∇A(x + sqrt(aΔ) z))`` (one more gradient per level): on a Gaussian its mean
      is exact and its covariance ``aΔ(I − aΔH/2)²`` matches the exact ``aΔ(I − aΔH)`` to
      second order, where Euler–Maruyama's ``aΔ I`` is first-order (docs/METHOD.md §4c).
  """
  rule: str = "left"
  noise: str = "unit"
  laplacian: str = "auto"
  probes: int = 1
  proposal: str = "euler"
  scores: str = "gradients"
  estimates_log_z = False

  @property
  def last_level_needs_gradient(self) -> bool:
    """The trapezoid rule reads the rate at σ_K; the left rule only the terms there."""
    return self.rule == "trapezoid"

  def check(self, event_shape: Optional[Sequence[int]] = None) -> None:
    if self.rule not in ("trapezoid", "left"):
      raise ValueError(f"ScoreOnly.rule must be 'trapezoid' or 'left', got {self.rule!r}.")
    if self.noise not in ("unit", "matched"):
      raise ValueError(f"ScoreOnly.noise must be 'unit' or 'matched', got {self.noise!r}.")
    if self.laplacian not in ("auto", "exact", "hutchinson"):
      raise ValueError("ScoreOnly.laplacian must be 'auto', 'exact' or 'hutchinson', got "
                       f"{self.laplacian!r}.")
    if not (isinstance(self.probes, int) and self.probes >= 1):
      raise ValueError(f"ScoreOnly.probes must be an int >= 1, got {self.probes!r}.")
    if self.proposal not in ("euler", "shaped"):
      raise ValueError(f"ScoreOnly.proposal must be 'euler' or 'shaped', got {self.proposal!r}.")
    if self.scores not in ("gradients", "heads"):
      raise ValueError(f"ScoreOnly.scores must be 'gradients' or 'heads', got {self.scores!r}.")
    if self.scores == "heads" and (self.noise != "unit" or self.proposal != "euler"):
      raise ValueError("ScoreOnly(scores='heads') needs noise='unit' and proposal='euler' (matched "
                       "noise needs the energies' Laplacian, the shaped proposal a second "
                       "gradient).")

  def scales(self, target: Target) -> Tuple[Array, Array]:
    s = target.scale
    return s, (s if self.noise == "matched" else jnp.ones_like(s))

  def laplacian_method(self, size: int) -> str:
    """``'exact'`` or ``'hutchinson'`` for events of ``size`` numbers (``'auto'`` resolved)."""
    if self.laplacian != "auto":
      return self.laplacian
    return "exact" if size <= EXACT_LAPLACIAN_MAX_SIZE else "hutchinson"

  def evaluations_per_level(self, size: int) -> int:
    """Energy evaluations per particle and level (value and gradient count as one, a
    Hessian-vector product as two): the NFE of this scheme's SMC."""
    nfe = 1 + (self.proposal == "shaped")
    if self.noise == "matched":
      nfe += 2 * (size if self.laplacian_method(size) == "exact" else self.probes)
    return nfe

  def evaluate(self, target: Target, x: Array, sigma: Array,
               key: Optional[Array] = None) -> Evaluation:
    """One particle's evaluation; ``key`` (shared by all particles of a level) draws the
    Hutchinson probes."""
    if self.scores == "heads":
      e, scores = target.energy_values_and_scores(x, sigma)
      grads = -scores
    else:
      e, grads = target.energy_values_and_grads(x, sigma)             # (L,), (L, *event)
    w = target.weights
    flat = grads.reshape(grads.shape[0], -1)
    g = jnp.tensordot(w, grads, axes=1)                               # ∇A = Σ w_i ∇E_i
    a = 1.0 / self.scales(target)[1]
    rate = a * jnp.sum(g**2) - jnp.dot(w, jnp.sum(flat**2, axis=-1))
    if self.noise == "matched":
      potential = lambda y: target.diffusion_potential(y, sigma)
      if self.laplacian_method(x.size) == "exact":
        lap = _laplacian(potential, x)
      else:
        lap = _hutchinson_laplacian(potential, x, key, self.probes)
      rate += (1.0 - a) * lap
    terms = target.term_potential(x, sigma)
    return Evaluation(jnp.dot(w, e) + terms, g, rate, terms)

  def propose(self, target: Target, x: Array, evaluation: Evaluation, noise: Array, var: Array,
              sigma: Array) -> Tuple[Array, Array]:
    """:meth:`move`, and Euler–Maruyama's mean (the kernel ratio is not used by these weights)."""
    return (self.move(target, x, evaluation.grad, noise, var, sigma),
            x + var * (-evaluation.grad))

  def cached_potential_and_grad(self, target: Target, evaluation: Evaluation):
    """``(U, ∇A)`` is ``(U, ∇U)`` when the target has no terms (and the scores are gradients)."""
    if target.terms is None and self.scores == "gradients":
      return evaluation.potential, evaluation.grad
    return None

  def evaluation_after_mcmc(self, evaluation: Evaluation, potential: Array, grad: Array):
    return None     # the rate needs every energy's gradient at the new points

  def setting_warnings(self, scale: Optional[float], size: int) -> list:
    out = []
    if self.noise == "unit" and scale is not None and abs(scale - 1.0) > 1e-6:
      out.append(f"ScoreOnly(noise='unit') on a target of scale {scale:g} in {size} dimensions: "
                 "its proposal keeps the summed/scaled score's width, which these weights "
                 "cannot correct in high dimension. Use ScoreOnly(noise='matched', "
                 "proposal='shaped') (docs/METHOD.md §4c).")
    if self.noise == "matched" and self.proposal == "euler":
      out.append(f"ScoreOnly(proposal='euler') in {size} dimensions: the Euler–Maruyama "
                 "proposal's O(step) widening is not corrected by score-only weights; use "
                 "proposal='shaped' (docs/METHOD.md §4c).")
    return out

  def move(self, target: Target, x: Array, grad: Array, noise: Array, var: Array,
           sigma: Array) -> Array:
    """The proposal's new point for one particle: ``grad = ∇A(x)``, ``noise = sqrt(aΔ) z``."""
    if self.proposal == "euler":
      return x - var * grad + noise
    value, displaced = jax.value_and_grad(target.diffusion_potential)(x + noise, sigma)
    # A displaced point outside the support (+inf/NaN there) has no usable gradient: Euler there.
    displaced = jnp.where(jnp.isfinite(value), displaced, grad)
    return x + noise - 0.5 * var * (grad + displaced)

  def log_increment(self, old: Evaluation, new: Evaluation, log_kernel_ratio: Array,
                    sigma: Array, sigma_next: Array) -> Array:
    """``∫_{σ_{k+1}}^{σ_k} σ ρ dσ − T_{k+1}(x') + T_k(x)`` by the chosen rule; ``(N,)``."""
    step = sigma - sigma_next
    if self.rule == "left":
      integral = sigma * old.rate * step
    else:
      integral = 0.5 * (sigma * old.rate + sigma_next * new.rate) * step
    # A term's +inf (a hard box) minus +inf would be NaN: an invalid particle stays invalid.
    terms = jnp.where(jnp.isposinf(old.terms), 0.0, old.terms)
    return integral - new.terms + terms


Scheme = WeightScheme      # ExactRatio, HeadRatio, ScoreOnly, or any object with its methods
# The default of smc_sample / build / SMC: score-only weights with matched noise, the
# Hessian-shaped proposal and the trapezoid rule (docs/METHOD.md §4c; benchmarks/RESULTS.md
# "SMC in image dimensions"). ScoreOnly()'s own field defaults are the plain scheme of §4b.
DEFAULT = ScoreOnly(rule="trapezoid", noise="matched", laplacian="auto", proposal="shaped")
EXACT_LAPLACIAN_MAX_SIZE = 16   # 'auto': exact Laplacians up to this many numbers per example


def _laplacian(fn: Callable[[Array], Array], x: Array) -> Array:
  """``Δ fn(x) = tr ∇²fn(x)`` exactly: one Hessian-vector product per coordinate of ``x``."""
  grad = jax.grad(fn)
  basis = jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
  hvp = lambda v: jnp.vdot(jax.jvp(grad, (x,), (v,))[1], v)
  return jnp.sum(jax.vmap(hvp)(basis))


def _hutchinson_laplacian(fn: Callable[[Array], Array], x: Array, key: Array,
                          probes: int) -> Array:
  """``Δ fn(x)`` estimated as the mean of ``vᵀ∇²fn(x) v`` over ``probes`` Rademacher ``v`` drawn
  from ``key`` (unbiased; one Hessian-vector product per probe)."""
  if key is None:
    raise ValueError("the Hutchinson Laplacian needs a key.")
  v = jax.random.rademacher(key, (probes,) + x.shape, x.dtype)
  grad = jax.grad(fn)
  hvp = lambda u: jnp.vdot(jax.jvp(grad, (x,), (u,))[1], u)
  return jnp.mean(jax.vmap(hvp)(v))


SCHEME_METHODS = ("check", "scales", "evaluate", "propose", "log_increment",
                  "cached_potential_and_grad", "evaluation_after_mcmc", "setting_warnings",
                  "estimates_log_z", "last_level_needs_gradient")


def check_scheme(scheme, event_shape: Optional[Sequence[int]] = None) -> None:
  """Raises a clear ValueError for anything that is not a valid weight scheme (an
  :class:`ExactRatio`, a :class:`ScoreOnly`, or an object with :class:`WeightScheme`'s
  methods), or whose settings are invalid (``scheme.check(event_shape)``)."""
  missing = [name for name in SCHEME_METHODS if not hasattr(scheme, name)]
  if missing:
    raise ValueError("weights must be a weight scheme: fkdiff.sampling.ExactRatio(), "
                     "ScoreOnly(), or an object with the methods of "
                     f"fkdiff.sampling.weights.WeightScheme; got {scheme!r} (it lacks "
                     f"{', '.join(missing)}).")
  scheme.check(event_shape)


def check_per_example(name: str, fn, event_shape, want_shape) -> None:
  """Traces ``fn(x, σ)`` on one example of ``event_shape`` abstractly and checks that it returns
  ``want_shape``; a clear ValueError otherwise."""
  x = jax.ShapeDtypeStruct(tuple(event_shape), jnp.float32)
  s = jax.ShapeDtypeStruct((), jnp.float32)
  try:
    out = jax.eval_shape(fn, x, s)
  except Exception as e:  # shape errors inside user code surface as many exception types
    raise ValueError(f"{name} could not be evaluated on one example of event_shape "
                     f"{tuple(event_shape)} with a scalar sigma ({type(e).__name__}: {e}). "
                     "Energies are per example: energy_fn(x, sigma) -> scalar.") from e
  if not hasattr(out, "shape") or tuple(out.shape) != tuple(want_shape):
    got = getattr(out, "shape", type(out))
    raise ValueError(f"{name} must return shape {tuple(want_shape)} for one example of "
                     f"event_shape {tuple(event_shape)}, got {got}.")
