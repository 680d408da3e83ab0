"""Sampling: plain diffusion samplers, Feynman–Kac SMC, targets (potentials), MCMC, baselines.

Public API (all per-example callables, particles vmapped inside):
- :func:`smc_sample` → :class:`SMCResult` (``particles, log_weights, log_Z, ess, info, …``).
- targets: :func:`tempered`, :func:`product`, :func:`conditional_and`, :func:`disjunction`,
  :func:`negation`, :func:`bounded_soft`, :func:`bounded_hard`, :func:`reward_tilt`,
  :func:`label_sum` (several labels of one conditional network in one call); each
  records its potential scale (:func:`scale_of`), which :func:`smc_sample` sizes its kernels to.
- plain samplers: :func:`heun_sample`, :func:`euler_maruyama_sample`, :func:`prior_sample`.
- baselines: :func:`naive_reverse_sample`, :func:`annealed_mcmc_sample`.
- resampling: :func:`get_resampler`, :func:`ess`.
"""
from fkdiff.sampling import baselines, mcmc, resampling, reverse, smc, targets
from fkdiff.sampling.baselines import naive_reverse_sample
from fkdiff.sampling.mcmc import (AnnealedMCMCResult, MCMCInfo, MCMCState, annealed_mcmc_sample,
                                  hmc_kernel, mala_kernel, ula_kernel)
from fkdiff.sampling.resampling import ess, get_resampler, log_ess, normalized_weights
from fkdiff.sampling.reverse import euler_maruyama_sample, heun_sample, prior_sample
from fkdiff.sampling.smc import SMCInfo, SMCResult, SMCState, smc_sample, weighted_mean
from fkdiff.sampling.targets import (annealed_penalty_schedule, bounded_hard, bounded_soft,
                                     conditional_and, disjunction, label_sum, negation,
                                     product, reward_tilt, scale_of, tempered,
                                     tweedie_denoiser)
