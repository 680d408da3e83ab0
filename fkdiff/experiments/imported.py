"""An imported diffusers teacher end to end: teacher check → distillation → SMC.

Stages (each reused on relaunch):
  1. teacher check: the checkpoint folder ``config.checkpoint`` loads
     (:func:`fkdiff.models.imported.load_diffusers_teacher`: a bad folder is a one-line error),
     its parameter count, and its denoiser on noisy versions ``x_0 + σ ε`` of a few examples at
     ``check.sigmas``: mean squared error of ``D(x, σ)`` to ``x_0`` per number, beside the
     identity's (``x`` itself, ≈ σ²), and the check that every output is finite;
  2. training data: with ``dataset = ''`` the teacher's own samples (the option for a teacher
     whose training data is not at hand): ``teacher_samples.num`` deterministic Heun samples
     (``fkdiff.sampling.reverse.heun_sample``) from the imported denoiser, clipped to [-1, 1],
     labels ``i mod num_class_embeds`` for a class-conditional checkpoint, drawn once and cached
     in ``<workdir>/teacher_samples.npz``; else the image dataset ``dataset`` (tfds,
     :mod:`fkdiff.data.images`);
  3. distillation (``<workdir>/energy``, :func:`fkdiff.experiments.common.run_stage`): the energy's
     ``h`` is the imported network, started from its weights (``teacher.diffusers``,
     ``model.name = 'diffusers'``), trained by fkdiff's distillation on stage 2's data;
  4. SMC problems (``problems``) on the distilled energy, ``sampler.num_particles`` particles,
     one SMC run per row:
     - ``low_temperature``: ``∝ p(x [| label])^β`` for β in ``low_temperature.betas``, by the
       methods ``low_temperature.methods`` (``smc_default``: ``smc_sample``'s default scheme, or
       another of :data:`fkdiff.experiments.common.SMC_METHODS`; ``naive``: reverse diffusion on
       the β-scaled score);
     - ``and`` (class-conditional checkpoints only): ``∝ p(x | a) p(x | b)`` for the two labels
       ``conjunction.labels`` (``targets.label_sum``: one batched network call on both labels).
       A diffusers class embedding has no null label, so there is no ``E(x | ∅)`` and the AND is
       the plain product of the two conditionals, not the classifier-free ``p(x|a)p(x|b)/p(x)``.

Metrics per row: ``nfe_per_sample`` (network evaluations per sample; SMC, whose one run gives N
samples: labels × the scheme's evaluations per level × levels, plus rejuvenation,
``common.nfe_per_particle``; naive: labels × (levels − 1)), ``seconds`` (the
row's wall time, compilation included), ``num_nonfinite``, ``pixel_mean`` / ``pixel_std`` of the
samples, and for SMC ``ess_min_fraction`` (minimum ESS / N over the levels and the final set) and
``resamplings``. Outputs: ``results.json``, ``results.txt``, sample grids ``<problem>_<setting>_
<method>.png``, TensorBoard scalars; a progress line per sampled row.
"""

import functools
import os
import time
from typing import Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fkdiff.diffusion import edm
from fkdiff.evaluation import plots
from fkdiff.experiments import common
from fkdiff.models import imported
from fkdiff.sampling import resampling, reverse, smc, targets
from fkdiff.sampling.baselines import naive_reverse_sample
from fkdiff.training.config import default_config, validate_config

PROBLEMS = ("low_temperature", "and")
METHODS = common.SMC_METHODS + ("naive",)
SAMPLES_FILE = "teacher_samples.npz"
ENERGY_DIR = "energy"


def job_config() -> ml_collections.ConfigDict:
  """Every key the imported-teacher job understands (see ``configs/import_teacher.py``)."""
  c = ml_collections.ConfigDict()
  c.job = "imported"
  c.seed = 0
  c.checkpoint = ""               # the diffusers checkpoint folder (required).
  c.image_size = 0                # pixels; 0 = the checkpoint's sample_size.
  c.dataset = ""                  # '' = the teacher's own samples; else an image data.name.
  c.data_dir = ""                 # tfds data_dir of ``dataset`` ('' = the tfds default).
  c.teacher_samples = ml_collections.ConfigDict()
  c.teacher_samples.num = 1024    # examples drawn once from the teacher (dataset = '').
  c.teacher_samples.steps = 32    # Heun levels (2 · steps − 1 network calls per sample).
  c.teacher_samples.batch = 64    # samples per compiled call.
  c.check = ml_collections.ConfigDict()
  c.check.sigmas = (0.05, 0.5, 5.0)
  c.check.num = 16                # examples the denoiser is checked on.
  c.distill = default_config()    # the distillation stage's training settings.
  c.distill.task = "distill"
  c.problems = PROBLEMS
  c.low_temperature = ml_collections.ConfigDict()
  c.low_temperature.betas = (2.0,)
  c.low_temperature.label = 0     # the class of a class-conditional checkpoint.
  c.low_temperature.methods = ("smc_default", "naive")
  c.conjunction = ml_collections.ConfigDict()
  c.conjunction.labels = (0, 1)
  c.conjunction.methods = ("smc_default", "naive")
  c.sampler = common.sampler_config(num_steps=32)
  c.sampler.num_particles = 8     # N of each row's SMC run; samples of a naive row.
  c.sampler.quick_compile = False # compile the samplers without XLA's backend optimisations.
  c.eval = ml_collections.ConfigDict()
  c.eval.grid_samples = 8
  return c


def validate_job_config(config: ml_collections.ConfigDict) -> None:
  """A ``ValueError`` (``FileNotFoundError`` for the folder) naming the first bad key."""
  common.check_known_keys(config, job_config(), "imported", (
      "teacher_samples", "check", "low_temperature", "conjunction", "sampler", "eval"))
  if not config.checkpoint:
    raise ValueError("The imported-teacher job needs a checkpoint: pass "
                     "--config.checkpoint=<a diffusers checkpoint folder> (docs/imported_teachers.md).")
  if not os.path.isdir(config.checkpoint):
    raise FileNotFoundError(f"config.checkpoint {config.checkpoint!r} is not a folder.")
  validate_config(config.distill)
  if config.distill.task != "distill":
    raise ValueError(f"distill.task must be 'distill', got {config.distill.task!r}.")
  for kind, names, valid in (("problem", config.problems, PROBLEMS),
                             ("low_temperature method", config.low_temperature.methods, METHODS),
                             ("conjunction method", config.conjunction.methods, METHODS)):
    unknown = [n for n in names if n not in valid]
    if unknown:
      raise ValueError(f"Unknown {kind} {unknown[0]!r} in the config; choose from {valid}.")
  if any(b <= 0 for b in config.low_temperature.betas):
    raise ValueError(f"low_temperature.betas must be > 0, got {config.low_temperature.betas}.")
  if len(config.conjunction.labels) != 2:
    raise ValueError(f"conjunction.labels must be two labels, got {config.conjunction.labels}.")
  if not (isinstance(config.image_size, int) and config.image_size >= 0):
    raise ValueError(f"image_size must be an int >= 0, got {config.image_size!r}.")
  if any(s <= 0 for s in config.check.sigmas):
    raise ValueError(f"check.sigmas must be > 0, got {config.check.sigmas}.")
  for key in ("num", "steps", "batch"):
    if not (isinstance(config.teacher_samples[key], int) and config.teacher_samples[key] >= 1):
      raise ValueError(f"teacher_samples.{key} must be an int >= 1, got "
                       f"{config.teacher_samples[key]!r}.")
  common.validate_sampler(config.sampler)
  if config.sampler.num_particles < 2:
    raise ValueError(f"sampler.num_particles must be >= 2, got {config.sampler.num_particles}.")


def event_shape(teacher: imported.DiffusersTeacher, config) -> Tuple[int, int, int]:
  """``(H, W, C)`` of the checkpoint's images: ``image_size`` (0: the ``sample_size`` of its
  UNet ``config.json``) and its ``in_channels``."""
  size = config.image_size or sample_size(config.checkpoint)
  return (size, size, teacher.config.in_channels)


def sample_size(folder: str) -> int:
  """``sample_size`` of the checkpoint's UNet ``config.json`` (an int, or a square pair)."""
  import json
  path = folder if os.path.isfile(os.path.join(folder, imported.CONFIG)) else os.path.join(
      folder, "unet")
  with open(os.path.join(path, imported.CONFIG), encoding="utf-8") as f:
    size = json.load(f).get("sample_size")
  if isinstance(size, (list, tuple)) and len(set(size)) == 1:
    size = size[0]
  if not isinstance(size, int) or size < 1:
    raise imported.UnsupportedConfigError(
        f"UNet2DModel config sample_size={size!r} in {path}: the job needs a square image size; "
        "pass --config.image_size=<pixels>.")
  return size


def num_classes(teacher: imported.DiffusersTeacher) -> int:
  """The checkpoint's classes (0: unconditional)."""
  return int(teacher.config.num_class_embeds or 0)


# ---------------------------------------------------------------------------------------------
# Stages 1-2: teacher check and the teacher's samples.


def teacher_samples(teacher: imported.DiffusersTeacher, config, shape, key) -> dict:
  """``{'x': (M, H, W, C) in [-1, 1][, 'label': (M,)]}``: Heun samples of the teacher (see the
  module doc), ``M = teacher_samples.num``, drawn in chunks of ``teacher_samples.batch``."""
  ts, s = config.teacher_samples, config.sampler
  sigmas = edm.karras_sigmas(ts.steps, s.sigma_min, s.sigma_max, s.rho)
  classes = num_classes(teacher)
  labels = np.arange(ts.num) % classes if classes else None

  @jax.jit
  def chunk(params, key, label):
    x_init = reverse.prior_sample(key, label.shape[0], shape, s.sigma_max, 0.5)

    def one(x, l):
      lab = l if classes else None
      d = lambda y, sigma: teacher.module.apply(params, y, sigma, lab,
                                                method=imported.DiffusersBackbone.denoise)
      return reverse.heun_sample(d, x[None], sigmas)[0]

    return jnp.clip(jax.vmap(one)(x_init, label), -1.0, 1.0)

  out = []
  for start in range(0, ts.num, ts.batch):
    n = min(ts.batch, ts.num - start)
    lab = (labels[start:start + n] if classes else np.zeros(n)).astype(np.int32)
    out.append(np.asarray(chunk(teacher.params, jax.random.fold_in(key, start), lab)))
  data = {"x": np.concatenate(out).astype(np.float32)}
  if classes:
    data["label"] = labels.astype(np.int32)
  return data


def cached_teacher_samples(teacher, config, workdir: str, shape) -> dict:
  """:func:`teacher_samples`, drawn once into ``<workdir>/teacher_samples.npz`` (reused when it
  holds as many samples of this shape)."""
  path = os.path.join(workdir, SAMPLES_FILE)
  if os.path.isfile(path):
    with np.load(path) as f:
      data = {k: f[k] for k in f.files}
    if data["x"].shape == (config.teacher_samples.num,) + tuple(shape):
      print(f"Stage teacher samples: reusing {path}.", flush=True)
      return data
  print(f"Stage teacher samples: drawing {config.teacher_samples.num} ...", flush=True)
  data = teacher_samples(teacher, config, shape, jax.random.key(config.seed + 1))
  tmp = path + ".tmp.npz"
  np.savez(tmp, **data)
  os.replace(tmp, path)
  return data


def check_teacher(teacher: imported.DiffusersTeacher, examples: dict, sigmas, key) -> dict:
  """The denoiser on ``x_0 + σ ε`` for the examples ``x_0 (M, H, W, C)`` (with their labels):
  ``{'sigma_<σ>': {'teacher_mse', 'identity_mse'}}`` (per number), ``parameters``.

  Raises:
    ValueError: a non-finite denoiser output (naming σ).
  """
  x0 = jnp.asarray(examples["x"])
  label = examples.get("label")
  out = {"parameters": int(sum(np.prod(p.shape) for p in jax.tree.leaves(teacher.params)))}
  denoise = jax.jit(teacher.denoise)
  for i, sigma in enumerate(sigmas):
    noise = jax.random.normal(jax.random.fold_in(key, i), x0.shape)
    x = x0 + sigma * noise
    d = denoise(x, jnp.full((x0.shape[0],), sigma), None if label is None else jnp.asarray(label))
    if not bool(jnp.all(jnp.isfinite(d))):
      raise ValueError(f"The checkpoint's denoiser gives non-finite outputs at σ = {sigma:g}.")
    out[f"sigma_{sigma:g}"] = {"teacher_mse": float(jnp.mean((d - x0)**2)),
                               "identity_mse": float(jnp.mean((x - x0)**2))}
  return out


# ---------------------------------------------------------------------------------------------
# Stage 3: distillation.


def stage_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """The distillation stage's training config: ``config.distill`` with the imported teacher
  (``teacher.diffusers``), its network as the student's ``h`` and the job's data."""
  c = ml_collections.ConfigDict(config.distill.to_dict())
  c.task = "distill"
  c.seed = config.seed
  c.teacher.workdir = ""
  c.teacher.diffusers = os.path.abspath(config.checkpoint)
  c.model.name = "diffusers"
  c.model.num_classes = 0          # no null label (see the module doc).
  c.data.label_dropout = c.data.attribute_dropout = 0.0
  c.data.sigma_data = 0.5
  if config.dataset:
    c.data.name, c.data.data_dir = config.dataset, config.data_dir
  else:
    c.data.name, c.data.array_file = "arrays", os.path.join(workdir, SAMPLES_FILE)
  return c


# ---------------------------------------------------------------------------------------------
# Stage 4: SMC.


class Problem(NamedTuple):
  """One sampled row: its problem, setting name, method and ``potential(params) -> Target``."""
  problem: str
  setting: str
  method: str
  potential: Callable


def problems(config, energy: common.LoadedEnergy, classes: int) -> list:
  """The rows of ``config.problems`` (``and`` only for a class-conditional checkpoint)."""
  rows = []
  label = config.low_temperature.label if classes else None
  if "low_temperature" in config.problems:
    for beta in config.low_temperature.betas:
      pot = lambda p, beta=beta: targets.tempered(energy.target(p, label), beta)
      rows += [Problem("low_temperature", f"beta{beta:g}", m, pot)
               for m in config.low_temperature.methods]
  if "and" in config.problems and classes:
    labels = tuple(config.conjunction.labels)
    pot = lambda p: targets.label_sum(lambda x, s, l: energy.fn(p, x, s, l), jnp.asarray(labels),
                                      sigma_data=energy.sigma_data)
    rows += [Problem("and", f"{labels[0]}+{labels[1]}", m, pot) for m in config.conjunction.methods]
  return rows


def make_sampler(method: str, potential: Callable, config, shape) -> Callable:
  """``sample(params, key) -> (samples (N, H, W, C), diagnostics)``, jitted: one SMC run of
  ``N = sampler.num_particles`` (its final set resampled, systematic), or N naive samples."""
  s = config.sampler
  sigmas = common.levels(s)
  levels, size, n = int(sigmas.shape[0]), int(np.prod(shape)), s.num_particles

  options = {"xla_backend_optimization_level": 0} if s.quick_compile else None

  @functools.partial(jax.jit, compiler_options=options)
  def sample(params, key):
    u = potential(params)
    k_run, k_set = jax.random.split(key)
    if method == "naive":
      k_init, k_run = jax.random.split(k_run)
      x_init = reverse.prior_sample(k_init, n, shape, s.sigma_max, u.sigma_data)
      return naive_reverse_sample(k_run, u, x_init, sigmas), {
          "nfe_per_sample": jnp.float32(u.weights.shape[0] * (levels - 1))}
    res = smc.smc_sample(k_run, u, sigmas, n, shape, **common.smc_parts(method, s))
    num_resampled = jnp.sum(res.info.resampled)
    evals = u.weights.shape[0] * common.nfe_per_particle(method, s, size, levels, num_resampled)
    idx = resampling.systematic(k_set, res.log_weights, n)
    return res.particles[idx], {
        "nfe_per_sample": jnp.float32(evals),
        "ess_min_fraction": jnp.minimum(jnp.min(res.info.ess), res.ess) / n,
        "resamplings": num_resampled.astype(jnp.float32)}

  return sample


def run_problems(config, workdir: str, energy: common.LoadedEnergy, classes: int, shape) -> dict:
  """Stage 4: every row of :func:`problems`; ``{problem: {setting: {method: metrics}}}``."""
  key = jax.random.key(config.seed + 2)
  out = {}
  for row in problems(config, energy, classes):
    key, k_row = jax.random.split(key)
    start = time.perf_counter()
    samples, diag = make_sampler(row.method, row.potential, config, shape)(energy.params, k_row)
    samples = np.asarray(samples)
    seconds = time.perf_counter() - start
    finite = np.all(np.isfinite(samples.reshape(samples.shape[0], -1)), -1)
    shown = np.clip(np.where(finite[:, None, None, None], samples, 0.0), -1, 1)
    metrics = {k: float(v) for k, v in diag.items()}
    metrics.update(seconds=seconds, num_nonfinite=int(np.sum(~finite)),
                   pixel_mean=float(np.mean(shown)), pixel_std=float(np.std(shown)))
    out.setdefault(row.problem, {}).setdefault(row.setting, {})[row.method] = metrics
    plots.save_image_grid(shown[:config.eval.grid_samples],
                          os.path.join(workdir, f"{row.problem}_{row.setting}_{row.method}.png"))
    print(f"Sampled {row.problem}/{row.setting}/{row.method}: {seconds:.1f} s, NFE/sample "
          f"{metrics['nfe_per_sample']:.0f}" + (f", ESS min {metrics['ess_min_fraction']:.2f}"
                                                if "ess_min_fraction" in metrics else ""),
          flush=True)
  return out


def format_table(results: dict) -> str:
  """The results as text: the teacher check, then one line per problem × setting × method."""
  t = results["teacher"]
  lines = [f"teacher: {t['parameters']} parameters, {t['classes']} classes; denoising MSE per "
           "number (teacher / identity):"]
  lines += [f"  {k}: {v['teacher_mse']:.4f} / {v['identity_mse']:.4f}"
            for k, v in t.items() if k.startswith("sigma_")]
  lines.append(f"distillation: {results['distill']['steps']} steps on {results['distill']['data']}")
  cols = ("nfe_per_sample", "ess_min_fraction", "resamplings", "num_nonfinite", "pixel_mean",
          "pixel_std", "seconds")
  rows = [((problem, setting, method), m) for problem in PROBLEMS
          for setting, by_method in results.get(problem, {}).items()
          for method, m in by_method.items()]
  return "\n".join(lines + common.metrics_table((("problem", 16), ("setting", 8),
                                                 ("method", 12)), cols, rows, 10))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole job; returns (and writes to ``workdir/results.json``) the results."""
  validate_job_config(config)
  teacher = imported.load_diffusers_teacher(config.checkpoint)   # one-line errors on bad folders
  shape = event_shape(teacher, config)
  workdir = common.start_job(config, workdir)
  classes = num_classes(teacher)
  print(f"Stage teacher check: {config.checkpoint} ...", flush=True)
  if config.dataset:
    data = "dataset " + config.dataset
    examples = _dataset_examples(config, shape, config.check.num, classes)
  else:
    data = f"{config.teacher_samples.num} teacher samples"
    examples = cached_teacher_samples(teacher, config, workdir, shape)
    examples = {k: v[:config.check.num] for k, v in examples.items()}
  check = check_teacher(teacher, examples, tuple(config.check.sigmas),
                        jax.random.key(config.seed + 3))
  stage = stage_config(config, workdir)
  e_dir = os.path.join(workdir, ENERGY_DIR)
  common.run_stage("distill", stage, e_dir)
  energy = common.load_energies({"energy": e_dir})["energy"]
  results = {"teacher": {**check, "classes": classes, "event_shape": list(shape)},
             "distill": {"steps": int(stage.training.num_steps), "data": data}}
  results.update(run_problems(config, workdir, energy, classes, shape))
  common.write_results(workdir, results, format_table(results), config)
  return results


def _dataset_examples(config, shape, num: int, classes: int) -> dict:
  """``num`` examples of the image dataset ``config.dataset`` (its train split)."""
  from fkdiff.data import images
  data = default_config().data
  data.name, data.data_dir = config.dataset, config.data_dir
  arrays = images.load_arrays(data, "train")
  x = images.to_model_range(arrays["image"][:num])
  if x.shape[1:] != tuple(shape):
    raise ValueError(f"dataset {config.dataset!r} has images of shape {x.shape[1:]}, the "
                     f"checkpoint {tuple(shape)}.")
  out = {"x": x}
  if "label" in arrays and classes:
    out["label"] = arrays["label"][:num]
  return out
