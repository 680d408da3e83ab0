"""The configuration schema shared by every training config, and its validation.

Config files in ``configs/`` start from :func:`default_config` and override fields. A key that is
not in the schema is a typo or a stale option: :func:`validate_config` rejects it with the closest
valid name, so a run never silently ignores a setting.
"""

import difflib
import importlib.util
import os
from typing import Optional

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """All keys a training run understands, with their defaults (toy 2-D ring teacher)."""
  c = ml_collections.ConfigDict()
  c.task = "teacher"          # 'teacher' (EDM denoiser DSM), 'distill', 'energy_dsm', 'two_head'.
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "toy2d"       # see fkdiff.data.pipeline for the registry ('arrays': a file).
  c.data.mixture = "ring"     # toy2d: a layout of fkdiff.data.toy; spectral: of data.spectral.
  c.data.mixture_kwargs = ml_collections.ConfigDict()
  c.data.batch_size = 512     # global batch (split over devices).
  c.data.sigma_data = 0.0     # σ_d; 0 means "the data's RMS std" (toy) / 0.5 (images).
  c.data.data_dir = ""        # images: tfds data_dir ("" = the tfds default).
  c.data.image_dir = ""       # afhqv2_64 / ffhq64: folder with train/<class>/*.png.
  c.data.array_file = ""      # 'arrays': an .npz of 'x' (N, *event) [and 'label' (N,)].
  c.data.label = "class"      # digits: 'class' or 'heavy_stroke' (ink above the median).
  c.data.random_flip = False  # images: horizontal flips with probability 1/2.
  c.data.label_dropout = 0.0  # classifier-free dropout: P(label -> null token) per example.
  c.data.attribute_dropout = 0.0   # multi-label: P(one attribute -> unspecified), independently.

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"        # 'mlp', 'unet'; 'diffusers': the network of teacher.diffusers.
  c.model.width = 128
  c.model.depth = 3
  c.model.emb_dim = 64
  c.model.num_classes = 0
  # Per-backbone sections: only the section named model.name is passed (with the fields above;
  # for the U-Net width = base channels, depth = residual blocks per level).
  c.model.unet = ml_collections.ConfigDict()
  c.model.unet.channel_mult = (1, 2, 2)
  c.model.unet.attn_resolutions = (16,)
  c.model.unet.num_heads = 1
  c.model.unet.num_attributes = 0   # > 0: multi-label attribute conditioning (celeb_a: 40).
  c.model.unet.remat_blocks = False # jax.checkpoint per block (memory for energy training).
  c.model.unet.dropout = 0.0        # dropout rate in each residual block (EDM: 0.13 CIFAR-10),
                                    # training losses only; no parameters (compute-only).

  c.energy = ml_collections.ConfigDict()      # used by 'distill' and 'energy_dsm'.
  c.energy.parameterization = "thornton"      # 'thornton', 'autoencoder', 'norm'.
  c.energy.remat = False                      # jax.checkpoint around the backbone.

  c.teacher = ml_collections.ConfigDict()     # used by 'distill'.
  c.teacher.workdir = ""                      # workdir of a finished teacher run, or ...
  c.teacher.diffusers = ""                    # ... a diffusers checkpoint folder (σ_d 0.5).
  c.teacher.init_student = True               # h starts from the teacher's weights.
  c.teacher.use_ema = True                    # distill the teacher's EMA parameters.
  c.teacher.log_asymmetry = True              # log how non-conservative the teacher is.

  c.distill = ml_collections.ConfigDict()     # used by 'distill' (METHOD.md §3).
  # Time-consistent distillation [experimental]: λ of the time-score term σ²/(2d)(∂_σE + b(σ) − t)²
  # (fkdiff.losses.distill.time_score_loss). 0 = the plain projection loss, bit for bit, and no
  # gauge network b(σ) in the parameters.
  c.distill.time_weight = 0.0
  # Target of ∂_σE: 'teacher': −σ(‖s_T‖² + ∇·s_T) (measured better on toy 2-D, see
  # benchmarks/RESULTS.md, "Time-consistent distillation"); 'noise': (d − ‖ε‖²)/σ (unbiased, needs no teacher).
  c.distill.time_target = "teacher"
  c.distill.time_probes = 0         # 'teacher': Rademacher probes of the Hutchinson ∇·s_T; 0:
                                    # the exact trace for examples of ≤ 64 numbers, else 1 probe.
  c.distill.gauge_width = 32        # hidden width of the gauge network b(log σ).

  # 'two_head': one network with a score head and an energy head (fkdiff.losses.two_head,
  # docs/METHOD.md §4e), trained from the data ('data') or from teacher.workdir ('teacher').
  c.two_head = ml_collections.ConfigDict()
  c.two_head.target = "data"
  c.two_head.energy_weight = 1.0    # w of the energy head's term.
  c.two_head.time_weight = 0.0      # λ of its time-score term (levels between modes; > 0 adds
                                    # a gauge network b(σ), width distill.gauge_width).
  c.two_head.time_probes = 0        # probes of the target's divergence; 0: exact for ≤ 64
                                    # numbers per example, else 1 probe.

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.sigma_min = 0.002
  c.diffusion.sigma_max = 80.0
  c.diffusion.rho = 7.0
  c.diffusion.p_mean = -1.2
  c.diffusion.p_std = 1.2

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.decay = "cosine"    # 'cosine' or 'constant' after warm-up.
  c.optim.final_lr_fraction = 0.1
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0     # global-norm clip; 0 disables.
  c.optim.ema_decay = 0.999

  c.training = ml_collections.ConfigDict()
  c.training.num_steps = 4000
  c.training.log_every = 100
  c.training.checkpoint_every = 1000
  c.training.keep_checkpoints = 3
  c.training.sample_every = 2000    # PNG of samples; 0 disables (a final one is always made).
  c.training.sigma_bins = (0.05, 0.5, 5.0)   # edges of σ bins for per-σ metrics.
  c.training.quick_compile = False  # compile step and evaluation without XLA's backend
                                    # optimisations: ~2× faster compiles, slower steps (smoke runs).

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 4096         # final samples and metrics; 0 skips the final evaluation.
  c.eval.sample_steps = 64
  c.eval.score_sigma = 0.5          # σ at which the score error is reported.
  # Heat-equation diagnostics of energy runs on toy data (fkdiff.evaluation.time_consistency):
  # residual spread and inter-mode level error against the exact energy at these σ.
  c.eval.time_diagnostics = True
  c.eval.time_sigmas = (0.05, 0.1, 0.3, 1.0)
  c.eval.time_points = 256          # points per mixture component and σ.
  return c


def validate_config(config: ml_collections.ConfigDict,
                    reference: ml_collections.ConfigDict | None = None, prefix: str = "") -> None:
  """Raises ``ValueError`` for keys of ``config`` that ``reference`` does not have.

  ``data.mixture_kwargs`` is free-form (validated by the mixture constructor).
  """
  reference = default_config() if reference is None else reference
  for key, value in config.items():
    path = prefix + key
    if key not in reference:
      close = difflib.get_close_matches(key, list(reference.keys()), n=1)
      hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
      raise ValueError(f"Unknown config key '{path}'.{hint} Valid keys here: "
                       f"{sorted(reference.keys())}.")
    if path == "data.mixture_kwargs":
      continue
    if isinstance(value, ml_collections.ConfigDict):
      validate_config(value, reference[key], prefix=path + ".")
  if not prefix:
    _validate_values(config)


def _validate_values(config: ml_collections.ConfigDict) -> None:
  """Range checks of the settings whose bad values would otherwise fail late or silently."""
  dist = config.get("distill")
  if dist is not None:
    if dist.get("time_weight", 0.0) < 0:
      raise ValueError(f"distill.time_weight must be ≥ 0, got {dist.time_weight}.")
    if dist.get("time_target", "noise") not in ("noise", "teacher"):
      raise ValueError("distill.time_target must be 'noise' or 'teacher', got "
                       f"{dist.time_target!r}.")
    if dist.get("time_probes", 1) < 0 or dist.get("gauge_width", 32) < 1:
      raise ValueError("distill.time_probes must be ≥ 0 and distill.gauge_width ≥ 1.")
  heads = config.get("two_head")
  if heads is not None:
    if heads.get("target", "data") not in ("data", "teacher"):
      raise ValueError(f"two_head.target must be 'data' or 'teacher', got {heads.target!r}.")
    if not heads.get("energy_weight", 1.0) > 0:
      raise ValueError(f"two_head.energy_weight must be > 0, got {heads.energy_weight}.")
    if heads.get("time_weight", 0.0) < 0 or heads.get("time_probes", 0) < 0:
      raise ValueError("two_head.time_weight and two_head.time_probes must be ≥ 0.")
  data = config.get("data")
  if data is not None and not data.get("sigma_data", 0.0) >= 0:
    raise ValueError(f"data.sigma_data must be ≥ 0 (0: computed from the data), got "
                     f"{data.sigma_data}.")
  ev = config.get("eval")
  if ev is not None and any(s <= 0 for s in ev.get("time_sigmas", ())):
    raise ValueError(f"eval.time_sigmas must be positive, got {tuple(ev.time_sigmas)}.")


def config_module(filename: str, next_to: Optional[str] = None):
  """Imports a config file as a module (``configs/`` is not a package: its files, the tests and
  the notebooks load config files by path).

  Args:
    filename: the config file's path, or its name in the folder of ``next_to``.
    next_to: a file (usually the caller's ``__file__``) next to which ``filename`` lies.
  Returns:
    The module; call its ``get_config(variant)``.
  """
  path = filename if next_to is None else os.path.join(
      os.path.dirname(os.path.abspath(next_to)), filename)
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
