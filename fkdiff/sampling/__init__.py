"""Sampling: plain diffusion samplers, Feynman–Kac SMC, targets, weight schemes, MCMC, baselines.

Public API (all per-example callables, particles vmapped inside):
- :func:`smc_sample` → :class:`SMCResult` (``particles, log_weights, log_Z, ess, info, …``), the
  ``lax.scan`` driver over the parts :func:`fkdiff.sampling.smc.init` / ``step`` / ``finish`` of an
  :class:`SMC` (target, weight scheme, :class:`Resampling`, rejuvenation kernel).
- weight schemes: :class:`ScoreOnly` (default; holds on learned energies), :class:`ExactRatio`,
  :class:`HeadRatio` (exact ratio, proposal from two-headed networks' score heads).
- targets (:class:`Target` objects): :func:`tempered`, :func:`product`, :func:`conditional_and`,
  :func:`label_sum`, :func:`disjunction`, :func:`negation`, :func:`bounded_soft`,
  :func:`bounded_hard`, :func:`reward_tilt`; :func:`scale_of` reads a target's scale.
- rejuvenation: :func:`rejuvenation` (MALA/HMC kernels at fixed σ).
- plain samplers: :func:`heun_sample`, :func:`euler_maruyama_sample`, :func:`prior_sample`.
- baselines: :func:`naive_reverse_sample`, :func:`annealed_mcmc_sample`.
- resampling: :func:`get_resampler`, :func:`ess`.
"""
from fkdiff.sampling import baselines, mcmc, resampling, reverse, smc, targets, weights
from fkdiff.sampling.baselines import naive_reverse_sample
from fkdiff.sampling.mcmc import (AnnealedMCMCResult, MCMCInfo, MCMCState, annealed_mcmc_sample,
                                  hmc_kernel, mala_kernel, rejuvenation, ula_kernel)
from fkdiff.sampling.resampling import ess, get_resampler, log_ess, normalized_weights
from fkdiff.sampling.reverse import euler_maruyama_sample, heun_sample, prior_sample
from fkdiff.sampling.smc import (SMC, Resampling, SMCInfo, SMCResult, SMCState, smc_sample,
                                 weighted_mean)
from fkdiff.sampling.targets import (Target, annealed_penalty_schedule, as_target, bounded_hard,
                                     bounded_soft, conditional_and, disjunction, label_sum,
                                     negation, product, reward_tilt, scale_of, tempered,
                                     tweedie_denoiser)
from fkdiff.sampling.weights import ExactRatio, HeadRatio, ScoreOnly, WeightScheme
