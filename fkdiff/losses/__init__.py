"""Training objectives: denoising score matching (teachers) and energy distillation."""
from fkdiff.losses.dsm import make_dsm_loss, noisy_batch, weighted_sq_error
from fkdiff.losses.distill import (asymmetry, make_distill_loss, noise_time_target,
                                   teacher_time_target, time_score_loss)
