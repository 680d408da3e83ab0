"""Digits end to end on a CPU: conditional low temperature and AND with distilled energies.

Stages (each reused when finished; an interrupted one resumes from its checkpoint):
  1. two class-conditional teachers on scikit-learn's 8×8 digits (classifier-free label dropout):
     ``class`` (the digit, 10 classes) and ``stroke`` (the binary attribute "heavy stroke": mean
     ink above the train median), in ``<workdir>/teachers/<name>``;
  2. an energy distilled from each, ``<workdir>/energies/<name>``: one network gives
     ``E(x, σ | c)`` and ``E(x, σ | ∅)`` (``consistent`` source: time-consistent distillation,
     ``energies_consistent/<name>``); with the ``two_head`` source, a two-headed network per model
     (score and energy heads, docs/METHOD.md §4e) trained from the data with no teacher,
     ``<workdir>/two_head/<name>``, on which only ``two_head.methods`` run;
  3. a small CNN classifier of the digits (``<workdir>/classifier``), the judge of adherence and
     the feature space of a Fréchet distance (the digits' stand-in for Inception / FID);
  4. sampling, ``num_samples`` samples per condition (conditions vmapped), every method on the
     same energy:
     - ``low_temperature``: ``∝ p(x | c)^β`` for every class c and β in ``betas``, by
       Feynman–Kac SMC on ``β E(x, σ | c)`` with score-only weights (``smc_score``,
       :class:`~fkdiff.sampling.ScoreOnly`), exact-ratio weights (``smc_ratio``,
       :class:`~fkdiff.sampling.ExactRatio`) or ``smc_sample``'s default (``smc_default``),
       ``naive`` (reverse diffusion on the β-scaled score)
       and ``cfg`` (classifier-free guidance with weight β, ``∝ p(x) (p(x|c)/p(x))^β``, the usual
       way to buy adherence);
     - ``and``: digit c AND heavy stroke, ``∝ p(x|c) p(x|heavy) / p(x)``
       (``U = E_class(x|c) + E_stroke(x|heavy) − E_stroke(x|∅)``), by the three SMC
       methods and ``naive`` (the CFG-style score sum).

How SMC makes its samples (``sampler.smc_mode``, METHOD.md §4b "High dimension"): ``'runs'``
(default, as the image peers FKC and FK-steering do) runs ``num_samples`` independent SMC runs of
``particles_per_run`` particles each (vmapped over run keys) and keeps one draw from each final
weighted set: diversity comes from the runs, the weights only choose within a run. ``'set'`` runs
one SMC of ``num_samples`` particles and resamples its final set (in 64 dimensions its weights
degenerate for β > 1 and the set collapses onto a few lineages).

Metrics: ``adherence`` (classifier accuracy on the requested class), ``heavy`` and ``both``
(fractions with the heavy-stroke attribute, computed exactly from the pixels, and with both),
``diversity`` (mean pairwise distance of classifier features within a condition), ``unique``
(fraction of distinct samples), ``frechet`` (Fréchet distance in classifier-feature space to the
real train images of the same conditions) and ``nfe_per_sample`` (network evaluations per sample:
levels × particles × labels × the scheme's evaluations per level (value and gradient one, a
Hessian-vector product two: ``common.nfe_per_particle``), plus the rejuvenation steps; a conditional network evaluated on L
labels counts L; reverse diffusion: (levels − 1) × labels). SMC's within-set diagnostics, means over runs and conditions: ``ess_min_fraction``
(minimum ESS / N over the levels and the final set), ``set_unique`` (distinct fraction of a
systematic resampling of a run's final set), ``resamplings`` (resampling events per run),
``acceptance`` (rejuvenation's mean acceptance probability) and ``weights_invalid``. Outputs:
``results.json``, ``results.txt``, sample grids ``*.png`` (one row per condition), TensorBoard
scalars.
"""

import json
import os
import time
from typing import Callable, Dict, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fkdiff.data import images
from fkdiff.evaluation import classifier as classifier_lib
from fkdiff.evaluation import frechet, plots
from fkdiff.experiments import common
from fkdiff.sampling import resampling, reverse, smc, targets
from fkdiff.sampling.baselines import naive_reverse_sample
from fkdiff.training import checkpoint
from fkdiff.training.config import default_config, validate_config

PROBLEMS = ("low_temperature", "and")
SMC_METHODS = common.SMC_METHODS   # score-only / exact-ratio weights / smc_sample's default
SOURCES = ("learned", "consistent", "two_head")   # plain / time-consistent distilled energies,
                                                  # two-headed networks (no teacher)
LOW_TEMPERATURE_METHODS = SMC_METHODS + ("naive", "cfg")
AND_METHODS = SMC_METHODS + ("naive",)
SMC_MODES = ("runs", "set")
MODELS = {"class": ("class", 10), "stroke": ("heavy_stroke", 2)}   # name -> (data.label, classes)
HEAVY = 1


def job_config() -> ml_collections.ConfigDict:
  """Every key the digits job understands (see ``configs/digits.py``)."""
  c = ml_collections.ConfigDict()
  c.job = "digits"
  c.seed = 0
  c.data_dir = ""                 # tfds data_dir of the digits builder ("" = tfds default).
  c.problems = PROBLEMS
  c.teacher = default_config()    # training settings shared by both teachers ...
  c.distill = default_config()    # ... and by both distillations.
  # Energy sources: 'learned' (c.distill, energies/<model>) and 'consistent': time-consistent
  # distillation (METHOD.md §3b) with c.distill's settings and these overrides, from the same
  # teachers (energies_consistent/<model>); its rows are '<method>/consistent'.
  c.energies = ("learned",)
  c.consistent = ml_collections.ConfigDict()
  c.consistent.time_weight = 0.3
  c.consistent.time_target = "teacher"
  c.consistent.time_probes = 1    # Hutchinson probes of the teacher's divergence (d = 64).
  c.consistent.num_steps = 800
  c.consistent.methods = common.ENERGY_SMC_METHODS   # run on it (the others ignore levels).
  # The 'two_head' source: one network per model with a score head and an energy head, trained
  # from the data with no teacher (docs/METHOD.md §4e), the teachers' network, data and
  # optimiser; its rows are '<method>/two_head', for the methods listed here.
  c.two_head = common.two_head_section(num_steps=3000)
  c.low_temperature = ml_collections.ConfigDict()
  c.low_temperature.classes = tuple(range(10))
  c.low_temperature.betas = (1.0, 2.0, 4.0)
  c.low_temperature.methods = common.ENERGY_SMC_METHODS + ("naive", "cfg")
  c.conjunction = ml_collections.ConfigDict()
  c.conjunction.classes = tuple(range(10))
  c.conjunction.methods = common.ENERGY_SMC_METHODS + ("naive",)
  # The shared sampler keys (common.sampler_config) on this job's levels, and its own: how SMC
  # makes its samples.
  c.sampler = common.sampler_config(num_steps=64)
  c.sampler.num_samples = 64      # samples per condition, every method.
  c.sampler.smc_mode = "runs"     # 'runs': num_samples independent SMC runs, one draw from each;
                                  # 'set': one run of num_samples particles, final set resampled.
  c.sampler.particles_per_run = 8   # N of each independent run ('runs' only).
  c.classifier = ml_collections.ConfigDict()
  c.classifier.num_steps = 1500
  c.eval = ml_collections.ConfigDict()
  c.eval.grid_samples = 8         # samples per condition (row) in the PNG grids.
  return c


def validate_job_config(config: ml_collections.ConfigDict) -> None:
  """Unknown keys, problems, methods or classes: a ``ValueError`` naming them."""
  common.check_known_keys(config, job_config(), "digits", ("low_temperature", "conjunction",
                                                          "consistent", "two_head", "sampler",
                                                          "classifier", "eval"))
  validate_config(config.teacher)
  validate_config(config.distill)
  validate_config(common.time_consistent_distill(config.distill, config.consistent))
  validate_config(common.two_head_training(config.teacher, config.two_head))
  common.source_sampler("two_head", config)
  for kind, names, valid in (("problem", config.problems, PROBLEMS),
                             ("energy source", config.energies, SOURCES),
                             ("consistent method", config.consistent.methods, SMC_METHODS),
                             ("two_head method", config.two_head.methods, LOW_TEMPERATURE_METHODS),
                             ("low_temperature method", config.low_temperature.methods,
                              LOW_TEMPERATURE_METHODS),
                             ("conjunction method", config.conjunction.methods, AND_METHODS),
                             ("class", tuple(config.low_temperature.classes) +
                              tuple(config.conjunction.classes), tuple(range(10)))):
    unknown = [n for n in names if n not in valid]
    if unknown:
      raise ValueError(f"Unknown {kind} {unknown[0]!r} in the config; choose from {valid}.")
  if any(b <= 0 for b in config.low_temperature.betas):
    raise ValueError(f"low_temperature.betas must be > 0, got {config.low_temperature.betas}.")
  s = config.sampler
  common.validate_sampler(s)
  if s.smc_mode not in SMC_MODES:
    raise ValueError(f"Unknown sampler.smc_mode {s.smc_mode!r}; choose from {SMC_MODES}.")
  if s.smc_mode == "runs" and s.particles_per_run < 2:
    raise ValueError(f"sampler.particles_per_run must be >= 2, got {s.particles_per_run}.")


def _merge_saved(config: ml_collections.ConfigDict, saved: dict) -> None:
  """Sets ``config``'s keys (recursively) to ``saved``'s values where both have the key: new keys
  keep this version's defaults, keys this version dropped are ignored, lists become tuples, and
  a free-form section (empty by default, e.g. ``mixture_kwargs``) takes the saved dict whole."""
  for key, value in saved.items():
    if key not in config:
      continue
    if isinstance(value, dict) and isinstance(config[key], ml_collections.ConfigDict) and len(
        config[key]):
      _merge_saved(config[key], value)
    else:
      config[key] = tuple(value) if isinstance(value, list) else value


def read_job_config(workdir: str) -> ml_collections.ConfigDict:
  """A finished run's ``config.json`` on this version's keys: its values where the key still
  exists, the defaults of :func:`job_config` for new keys, and methods this version no longer
  has (a run saved before ``smc`` split into ``smc_score`` / ``smc_ratio``) replaced by the
  defaults; ``tasks`` (this version's ``problems``) is read as ``problems``. Used to sample an
  earlier run's (or the shipped demo's) models."""
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  if "tasks" in saved:
    saved.setdefault("problems", saved.pop("tasks"))
  config = job_config()
  _merge_saved(config, saved)
  for section, valid in (("low_temperature", LOW_TEMPERATURE_METHODS),
                         ("conjunction", AND_METHODS)):
    if any(m not in valid for m in config[section].methods):
      config[section].methods = valid
  return config


# ---------------------------------------------------------------------------------------------
# Stages 1-3: teachers, energies, classifier.


def stage_config(base: ml_collections.ConfigDict, task: str, model: str, data_dir: str,
                 teacher_workdir: str = "") -> ml_collections.ConfigDict:
  """The training config of one stage: ``base`` with the model's label and class count."""
  c = common.stage_base(base, task, teacher_workdir)
  c.data.name = "digits"
  c.data.data_dir = data_dir
  c.data.label, c.model.num_classes = MODELS[model]
  return c


def train_models(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Dict[str, str]]:
  """Runs (or reuses) both teachers and the distillations of every source in ``config.energies``
  (:func:`fkdiff.experiments.common.train_models`); ``{source: {model: energy workdir}}``."""
  return common.train_models(
      config, workdir, list(MODELS),
      lambda base, task, name, t_dir: stage_config(base, task, name, config.data_dir, t_dir))


def export_models(workdir: str, dest: str) -> None:
  """Copies a finished run's models to ``dest``, loadable like a workdir and free of its paths:
  ``config.json``, each stage's latest checkpoint (``teachers/``, ``energies/``), ``classifier/``.
  """
  import shutil
  for stage in [f"{kind}/{name}" for kind in ("teachers", "energies") for name in MODELS]:
    src, out = os.path.join(workdir, stage), os.path.join(dest, stage)
    config, step = checkpoint.read_config(src), checkpoint.latest_step(src)
    if config is None or step is None:
      raise checkpoint.CheckpointError(f"{src} holds no finished stage; run the job first.")
    if stage.startswith("energies"):   # relative to the energy's workdir (fkdiff.training.runs).
      config.teacher.workdir = os.path.join("..", "..", "teachers", os.path.basename(stage))
    shutil.copytree(os.path.join(checkpoint.checkpoint_dir(src), str(step)),
                    os.path.join(checkpoint.checkpoint_dir(out), str(step)))
    checkpoint.write_config(out, config)
  shutil.copytree(os.path.join(workdir, "classifier"), os.path.join(dest, "classifier"))
  shutil.copy(os.path.join(workdir, "config.json"), os.path.join(dest, "config.json"))
  for parent, _, files in os.walk(dest):   # orbax's commit markers name the saving path.
    if "commit_success.txt" in files:
      with open(os.path.join(parent, "commit_success.txt"), "w") as f:
        f.write("Checkpoint commit was successful.")


def digits_arrays(data_dir: str, split: str) -> dict:
  """``{'x': float (N, 8, 8, 1) in [-1, 1], 'label': (N,)}`` of a digits split."""
  data = default_config().data
  data.name, data.data_dir = "digits", data_dir
  arrays = images.load_arrays(data, split)
  return {"x": images.to_model_range(arrays["image"]), "label": arrays["label"]}


def get_classifier(config, workdir: str, train: dict, test: dict) -> classifier_lib.ClassifierRun:
  """Trains the judge classifier once (saved to ``<workdir>/classifier``), else loads it."""
  path = os.path.join(workdir, "classifier")
  if os.path.isdir(path):
    return classifier_lib.load(path, train["x"])
  print("Stage classifier: training ...", flush=True)
  run = classifier_lib.train_classifier(jax.random.key(config.seed + 7), train, test,
                                        num_steps=config.classifier.num_steps)
  classifier_lib.save(path, run)
  return run


# ---------------------------------------------------------------------------------------------
# Stage 4: sampling.


def potentials(energies: Dict[str, common.LoadedEnergy]) -> Dict[str, Callable]:
  """Per (problem, method) target ``(params, cond) -> U``; ``cond = (class, β)``. Without a
  ``'stroke'`` model, only the ``low_temperature`` targets.

  ``params`` is ``{model: parameters}`` (a jit argument); ``cond`` holds traced scalars. Each
  ``U`` is a :class:`fkdiff.sampling.Target` (its ``weights`` have one entry per network label
  evaluated) and carries its scale (β when tempered) and σ_d, to which ``smc_sample`` sizes its
  start (and, for exact-ratio weights, its kernels).
  """
  cls, stroke = energies["class"], energies.get("stroke")

  def e(model, params, label):
    return model.target(params, label)

  def tempered(params, cond):
    return targets.tempered(e(cls, params["class"], cond[0]), cond[1])

  # One network call per label (targets.product of closures), not targets.label_sum's one
  # batched call: on XLA:CPU (jax 0.10.2) a label-vmapped network under two more vmaps
  # (conditions × runs × particles) segfaults at run time; the values are the same.
  def guided(params, cond):   # E(x|∅) + β (E(x|c) − E(x|∅))
    return targets.product([e(cls, params["class"], cls.null), e(cls, params["class"], cond[0])],
                           jnp.stack([1.0 - cond[1], cond[1]]))

  def conjunction(params, cond):   # E(x|c) + E'(x|heavy) − E'(x|∅); scale 1 + 1 − 1.
    return targets.product([e(cls, params["class"], cond[0]), e(stroke, params["stroke"], HEAVY),
                            e(stroke, params["stroke"], stroke.null)], [1.0, 1.0, -1.0])

  out = {("low_temperature", "naive"): tempered, ("low_temperature", "cfg"): guided}
  for method in SMC_METHODS:
    out["low_temperature", method] = tempered
  if stroke is not None:   # a class model alone has the low-temperature targets only.
    for method in AND_METHODS:
      out["and", method] = conjunction
  return out


def _distinct(idx: jax.Array) -> jax.Array:
  """Number of distinct entries of an int vector."""
  idx = jnp.sort(idx)
  return 1 + jnp.sum(idx[1:] != idx[:-1])


def make_sampler(method: str, potential: Callable, config, event_shape):
  """``sample(params, key, classes (C,), betas (C,)) -> (samples (C, M, *event), diagnostics)``,
  jitted, ``M = sampler.num_samples`` samples per condition (vmapped over conditions);
  ``potential`` from :func:`potentials`.

  SMC (``smc_score``, ``smc_ratio``) in ``sampler.smc_mode``: ``'runs'``, M independent runs of
  ``particles_per_run`` particles (vmapped over run keys), one draw from each final weighted set
  (one index drawn with the normalised weights); ``'set'``, one run of M particles whose final set
  is resampled (systematic). Diagnostics, ``(C,)`` per condition (means over the runs):
  ``nfe_per_sample`` (every method; see the module doc), and for SMC ``ess_min_fraction``,
  ``set_unique``, ``resamplings``, ``weights_invalid``, ``acceptance`` (with rejuvenation; the
  mean over a run's resampling events, 0 if it never resampled), and per level σ_k
  ``ess_path`` (mean ESS / N), ``resampled`` (fraction of runs resampling) and ``sigma`` (C, K).
  """
  s = config.sampler
  sigmas = common.levels(s)
  levels = int(sigmas.shape[0])
  size = int(np.prod(event_shape))
  m = s.num_samples
  runs = s.smc_mode == "runs"
  n = s.particles_per_run if runs else m      # particles of one SMC run

  def smc_run(key, u):   # one SMC run: (its sample(s), diagnostics)
    k_smc, k_set, k_one = jax.random.split(key, 3)
    res = smc.smc_sample(k_smc, u, sigmas, n, event_shape, **common.smc_parts(method, s))
    idx = resampling.systematic(k_set, res.log_weights, n)    # the final set, resampled
    x = res.particles[resampling.multinomial(k_one, res.log_weights, 1)[0] if runs else idx]
    num_resampled = jnp.sum(res.info.resampled)
    evals = n * u.weights.shape[0] * common.nfe_per_particle(method, s, size, levels,
                                                             num_resampled)
    diag = {"ess_min_fraction": jnp.minimum(jnp.min(res.info.ess), res.ess) / n,
            "set_unique": _distinct(idx) / n, "resamplings": num_resampled.astype(jnp.float32),
            "weights_invalid": res.weights_invalid.astype(jnp.float32),
            "nfe_per_sample": (evals / (1 if runs else n)).astype(jnp.float32),
            "ess_path": res.info.ess / n,
            "resampled": res.info.resampled.astype(jnp.float32), "sigma": res.info.sigma}
    if s.rejuvenation:   # mean over the resampling events (0 where a run never resampled)
      diag["acceptance"] = jnp.sum(res.info.acceptance_rate) / jnp.maximum(num_resampled, 1)
    return x, diag

  def one(params, key, cls, beta):   # one condition
    u = potential(params, (cls, beta))
    if method in SMC_METHODS and runs:
      x, diag = jax.vmap(smc_run, in_axes=(0, None))(jax.random.split(key, m), u)
      return x, jax.tree.map(lambda v: jnp.mean(v, axis=0), diag)
    if method in SMC_METHODS:
      return smc_run(key, u)
    k_init, k_run = jax.random.split(key)
    x_init = reverse.prior_sample(k_init, m, event_shape, s.sigma_max, u.sigma_data)
    nfe = jnp.float32(u.weights.shape[0] * (levels - 1))
    return naive_reverse_sample(k_run, u, x_init, sigmas), {"nfe_per_sample": nfe}

  @jax.jit
  def sample(params, key, classes, betas):
    keys = jax.random.split(key, classes.shape[0])
    return jax.vmap(one, in_axes=(None, 0, 0, 0))(params, keys, classes, betas)

  return sample


def _mean_pairwise_distance(features: np.ndarray) -> float:
  """Mean Euclidean distance between distinct rows of ``features (N, D)`` (O(N²) memory)."""
  f = np.asarray(features, np.float64)
  sq = np.sum(f * f, -1)
  d2 = sq[:, None] + sq[None] - 2 * f @ f.T
  np.fill_diagonal(d2, 0.0)
  n = f.shape[0]
  return float(np.sum(np.sqrt(np.maximum(d2, 0))) / (n * (n - 1)))


def score_samples(samples: np.ndarray, classes, judge: classifier_lib.ClassifierRun,
                  reference: frechet.FeatureStats, threshold: float, heavy: bool) -> dict:
  """Metrics of ``samples (C, N, H, W, 1)`` drawn for ``classes (C,)`` (see the module doc)."""
  c, n = samples.shape[:2]
  flat = samples.reshape(c * n, *samples.shape[2:])
  finite = np.all(np.isfinite(flat.reshape(c * n, -1)), -1)
  flat = np.clip(np.where(finite[:, None, None, None], flat, 0.0), -1, 1)   # as saved images.
  logits, features = classifier_lib.logits_and_features(judge.model, judge.params, flat)
  correct = np.argmax(logits, -1) == np.repeat(np.asarray(classes), n)
  is_heavy = images.heavy_stroke(flat, threshold) == 1
  per_cond = features.reshape(c, n, -1)
  unique = [len(np.unique(np.round(s.reshape(n, -1), 5), axis=0)) / n for s in samples]
  out = {"adherence": float(np.mean(correct)),
         "diversity": float(np.mean([_mean_pairwise_distance(f) for f in per_cond])),
         "unique": float(np.mean(unique)),
         "frechet": frechet.frechet_distance(frechet.feature_stats(features), reference),
         "num_nonfinite": int(np.sum(~finite))}
  if heavy:
    out["heavy"] = float(np.mean(is_heavy))
    out["both"] = float(np.mean(correct & is_heavy))
  return out


class Reference(NamedTuple):
  """What the metrics compare samples with: the judge's features of the real train images,
  their labels and heavy-stroke attribute, and the heavy-stroke threshold."""
  features: np.ndarray     # (N, feature_dim)
  labels: np.ndarray       # (N,)
  heavy: np.ndarray        # (N,) bool
  threshold: float


def make_reference(judge: classifier_lib.ClassifierRun, train: dict,
                   threshold: float) -> Reference:
  """The :class:`Reference` of the train split ``train``."""
  features = classifier_lib.logits_and_features(judge.model, judge.params, train["x"])[1]
  return Reference(features, np.asarray(train["label"]),
                   images.heavy_stroke(train["x"], threshold) == 1, threshold)


def sampler_conditions(classes, beta: float):
  """The ``(classes (C,), betas (C,))`` arguments of a :func:`make_sampler` sampler."""
  cls = jnp.asarray(classes, jnp.int32)
  return cls, jnp.full(cls.shape, beta)


def evaluate(sampler: Callable, params, key, problem: str, beta: float, classes,
             judge: classifier_lib.ClassifierRun, reference: Reference):
  """Draws one batch per class with ``sampler`` (from :func:`make_sampler`) and scores it;
  returns ``(samples (C, N, H, W, 1), metrics, the sampler's diagnostics)``."""
  samples, diag = sampler(params, key, *sampler_conditions(classes, beta))
  samples = np.asarray(samples)
  keep = np.isin(reference.labels, classes) & (reference.heavy if problem == "and" else True)
  stats = frechet.feature_stats(reference.features[keep])
  metrics = score_samples(samples, classes, judge, stats, reference.threshold,
                          heavy=problem == "and")
  metrics.update({k: float(np.mean(v)) for k, v in diag.items() if np.ndim(v) == 1})
  return samples, metrics, diag


def run_problems(config, workdir: str, sources: Dict[str, Dict[str, common.LoadedEnergy]], judge,
              train) -> dict:
  """Stage 4: every problem × β × method × energy source (``sources``: ``{source: energies}``;
  the methods of each source: :func:`fkdiff.experiments.common.source_methods`; the
  ``two_head`` source's rows on the sampler section with ``two_head.sampler``'s overrides);
  returns the nested results dict (method keys ``<method>`` for ``learned``,
  ``<method>/<source>`` otherwise), writes grids and prints a line per row with an ETA."""
  threshold = images.heavy_stroke_threshold(config.data_dir or None)
  reference = make_reference(judge, train, threshold)
  event_shape = tuple(train["x"].shape[1:])
  key = jax.random.key(config.seed)
  results = {"classifier_test_accuracy": judge.test_accuracy, "heavy_threshold": threshold}
  settings = []   # (problem, β, classes, the problem's methods, its valid methods)
  if "low_temperature" in config.problems:
    settings += [("low_temperature", b, tuple(config.low_temperature.classes),
                  config.low_temperature.methods, LOW_TEMPERATURE_METHODS)
                 for b in config.low_temperature.betas]
  if "and" in config.problems:
    settings += [("and", 1.0, tuple(config.conjunction.classes), config.conjunction.methods,
                  AND_METHODS)]
  rows = [(source, problem, method, beta, classes) for source in sources
          for problem, beta, classes, methods, valid in settings
          for method in common.source_methods(source, methods, config, valid)]
  per_source = {}   # source -> (its config: its sampler section; its potentials; its params)
  for source, energies in sources.items():
    source_config = config
    if source == "two_head":
      source_config = ml_collections.ConfigDict(config.to_dict())
      source_config.sampler = common.source_sampler(source, config)
    per_source[source] = (source_config, potentials(energies),
                          {name: e.params for name, e in energies.items()})
  phase_start = time.perf_counter()
  samplers = {}
  for done, (source, problem, method, beta, classes) in enumerate(rows, 1):
    source_config, pots, params = per_source[source]
    if (source, problem, method) not in samplers:
      samplers[source, problem, method] = make_sampler(method, pots[problem, method],
                                                       source_config, event_shape)
    start = time.perf_counter()
    key, k_run = jax.random.split(key)
    samples, metrics, _ = evaluate(samplers[source, problem, method], params, k_run, problem,
                                   beta, classes, judge, reference)
    name = f"beta{beta:g}" if problem == "low_temperature" else "heavy"
    row = method if source == "learned" else f"{method}/{source}"
    results.setdefault(problem, {}).setdefault(name, {})[row] = metrics
    grid = samples[:, :config.eval.grid_samples]
    plots.save_image_grid(np.clip(grid.reshape(-1, *event_shape), -1, 1),
                          os.path.join(workdir, f"{problem}_{name}_{row.replace('/', '_')}.png"),
                          columns=grid.shape[1])
    now = time.perf_counter()
    eta = (now - phase_start) / done * (len(rows) - done)
    print(f"Sampled [{done}/{len(rows)}, ETA {eta / 60:.1f} min] {problem} {name} {row}: "
          f"{now - start:.0f} s, adherence {metrics['adherence']:.3f}, Fréchet "
          f"{metrics['frechet']:.1f}", flush=True)
  return results


def format_table(results: dict) -> str:
  """The results as a fixed-width table: one row per problem × setting × method."""
  cols = ("adherence", "both", "heavy", "diversity", "unique", "frechet", "nfe_per_sample",
          "ess_min_fraction", "set_unique")
  rows = [((problem, setting, method), m) for problem in PROBLEMS
          for setting, by_method in results.get(problem, {}).items()
          for method, m in by_method.items()]
  return "\n".join([f"classifier test accuracy {results['classifier_test_accuracy']:.3f}; heavy "
                    f"stroke: mean ink > {results['heavy_threshold']:.4f}"] +
                   common.metrics_table((("problem", 16), ("setting", 8), ("method", 20)), cols,
                                        rows, 10))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole job; returns (and writes to ``workdir/results.json``) the results."""
  validate_job_config(config)
  workdir = common.start_job(config, workdir)
  sources = {source: common.load_energies(dirs)
             for source, dirs in train_models(config, workdir).items()}
  train, test = digits_arrays(config.data_dir, "train"), digits_arrays(config.data_dir, "test")
  judge = get_classifier(config, workdir, train, test)
  results = run_problems(config, workdir, sources, judge, train)
  common.write_results(workdir, results, format_table(results), config)
  return results
