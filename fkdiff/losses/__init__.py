"""Training objectives: denoising score matching (teachers), energy distillation and the
two-headed network's joint loss."""
from fkdiff.losses.dsm import make_dsm_loss, noisy_batch, weighted_sq_error
from fkdiff.losses.distill import (asymmetry, make_distill_loss, noise_time_target,
                                   teacher_time_target, time_score_loss)
from fkdiff.losses.two_head import make_two_head_loss
