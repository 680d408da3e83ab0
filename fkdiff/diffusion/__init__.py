"""Diffusion conventions (EDM / variance-exploding)."""
from fkdiff.diffusion.edm import (Precond, denoiser_from_score, edm_denoiser, karras_sigmas,
                                  loss_weight, preconditioning, sample_sigmas,
                                  score_from_denoiser)
