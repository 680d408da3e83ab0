"""The skeleton every SMC job is built on: its training stages, its energies, its sampler section
and the SMC it maps to, and its outputs.

A job (``toy2d``, ``digits``, …) holds only what is particular to it — its data, targets, metrics
and tables — and takes the rest from here:

- stages: :func:`train_models` (a teacher per model and the distillations of every energy source,
  reused when finished; :data:`ENERGY_FOLDERS`), :func:`run_stage`;
- energies: :class:`LoadedEnergy` (a trained run's or a closed-form one, with its σ_d and null
  label), :func:`load_energies`;
- sampling: :func:`sampler_config` (the sampler keys every job shares, one meaning each),
  :func:`validate_sampler`, :func:`levels`, and :func:`smc_parts`, the one mapping from a method
  name of :data:`SMC_METHODS` and that section to ``smc_sample``'s weights, resampling and
  rejuvenation, with :func:`nfe_per_particle` (its energy evaluations);
- outputs: :func:`start_job`, :func:`write_results`, :func:`metrics_table`, :func:`check_known_keys`.
"""

import json
import os
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from fkdiff.diffusion import edm
from fkdiff.models import HeadEnergy
from fkdiff.sampling import mcmc, smc, targets
from fkdiff.sampling import weights as weights_lib
from fkdiff.training import checkpoint, runs


def run_stage(name: str, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains ``config`` in ``workdir`` unless a checkpoint of its final step is already there.

  An unfinished stage resumes from its last checkpoint (``train_and_evaluate``); a workdir whose
  run has a different architecture (``checkpoint.check_compatible``) or was trained towards a
  different objective (``checkpoint.check_same_objective``: data, loss, teacher, optimiser, seed)
  raises instead of being reused.
  """
  from fkdiff.training import train_and_evaluate
  step = checkpoint.latest_step(workdir)   # a listing: no restore, no multi-process barrier.
  if step is not None:
    checkpoint.check_compatible(workdir, config)
    checkpoint.check_same_objective(workdir, config)
    if step == config.training.num_steps:
      msg = f"Stage {name}: finished at step {step} in {workdir}; reusing its checkpoint."
      logging.info(msg)
      print(msg, flush=True)
      return
  print(f"Stage {name}: training in {workdir} ...", flush=True)
  train_and_evaluate(config, workdir)


# Where a distilled energy source's stages live in a job's workdir (each distils the teacher
# ``teachers/<name>``): plain distillation and the time-consistent one (METHOD.md §3b).
ENERGY_FOLDERS = {"learned": "energies", "consistent": "energies_consistent"}
# The energy source trained from the data with no teacher: a two-headed network per model
# (score and energy heads, docs/METHOD.md §4e), ``<workdir>/two_head/<name>``.
TWO_HEAD_FOLDER = "two_head"


def train_models(config: ml_collections.ConfigDict, workdir: str, names: Sequence[str],
                 stage_config: Callable) -> Dict[str, Dict[str, str]]:
  """Runs (or reuses) a job's training stages: a teacher per model name and, for every
  distilled source of ``config.energies`` (:data:`ENERGY_FOLDERS`), its distillation of it;
  with the ``two_head`` source, a two-headed network per model trained from the data
  (:func:`two_head_training`, no teacher).

  Args:
    config: the job's config (``teacher``, ``distill``, ``consistent``, ``energies`` and, for
      the ``two_head`` source, ``two_head``).
    names: the models to train.
    stage_config: ``(base, task, name, teacher_workdir) -> ConfigDict``, the stage's training
      config: ``base`` (``config.teacher`` or a distillation's) with the model's data.
  Returns:
    ``{source: {name: energy workdir}}``.
  """
  distill = {"learned": config.distill,
             "consistent": time_consistent_distill(config.distill, config.consistent)}
  sources = [s for s in ENERGY_FOLDERS if s in config.energies]
  out = {s: {} for s in sources}
  for name in names if sources else ():
    t_dir = os.path.join(workdir, "teachers", name)
    run_stage(f"teacher/{name}", stage_config(config.teacher, "teacher", name, ""), t_dir)
    for source in sources:
      folder = ENERGY_FOLDERS[source]
      e_dir = os.path.join(workdir, folder, name)
      run_stage(f"{folder}/{name}", stage_config(distill[source], "distill", name, t_dir), e_dir)
      out[source][name] = e_dir
  if "two_head" in config.energies:
    base = two_head_training(config.teacher, config.two_head)
    out["two_head"] = {}
    for name in names:
      h_dir = os.path.join(workdir, TWO_HEAD_FOLDER, name)
      run_stage(f"{TWO_HEAD_FOLDER}/{name}", stage_config(base, "two_head", name, ""), h_dir)
      out["two_head"][name] = h_dir
  return out


def stage_base(base: ml_collections.ConfigDict, task: str,
               teacher_workdir: str = "") -> ml_collections.ConfigDict:
  """A copy of the stage settings ``base`` for ``task``, a distillation pointed at
  ``teacher_workdir``: what every job's ``stage_config`` starts from before it sets its data."""
  c = ml_collections.ConfigDict(base.to_dict())
  c.task = task
  if task == "distill":
    c.teacher.workdir = teacher_workdir
  return c


def two_head_section(**overrides) -> ml_collections.ConfigDict:
  """A job's ``two_head`` section: the two-headed source's training (the teachers' network,
  data and optimiser settings with these overrides) and the SMC methods run on it.

  - ``num_steps``: its training steps; ``energy_weight``: the energy head's loss weight ``w``;
    ``time_weight``: its time-score term's ``λ_t`` (:mod:`fkdiff.losses.two_head`);
  - ``methods``: the methods run on it (``smc_heads``: :class:`~fkdiff.sampling.HeadRatio`);
  - ``sampler``: shared sampler keys (:func:`sampler_config`) set otherwise for its rows, e.g.
    ``{'rejuvenation': ''}``: one forward pass per level and nothing else (:func:`source_sampler`).
  """
  c = ml_collections.ConfigDict()
  c.num_steps = 4000
  c.energy_weight = 1.0
  c.time_weight = 0.0
  c.methods = ("smc_heads",)
  c.sampler = ml_collections.ConfigDict()
  c.update(overrides)
  return c


def source_sampler(source: str,
                   config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The sampler section a job's rows on the energy source ``source`` run with: ``config.sampler``,
  and on ``two_head`` a validated copy with ``config.two_head.sampler``'s overrides (each a key of
  the section: a ``ValueError`` names one that is not)."""
  sampler = config.sampler
  if source != "two_head":
    return sampler
  overrides = config.two_head.sampler
  unknown = [k for k in overrides.keys() if k not in sampler]
  if unknown:
    raise ValueError(f"Unknown sampler key {unknown[0]!r} in two_head.sampler; valid: "
                     f"{sorted(sampler.keys())}.")
  s = ml_collections.ConfigDict(sampler.to_dict())
  s.update(overrides.to_dict())
  validate_sampler(s)
  return s


def source_methods(source: str, methods: Sequence[str], config: ml_collections.ConfigDict,
                   valid: Sequence[str]) -> List[str]:
  """The methods a job runs on the energy source ``source`` for a problem whose method list is
  ``methods``: on ``two_head``, its own ``config.two_head.methods`` (those in ``valid``, the
  problem's methods, e.g. a ``cfg`` row only where it is one); on ``consistent``, those of
  ``methods`` in ``config.consistent.methods``; on any other source, ``methods``."""
  if source == "two_head":
    return [m for m in config.two_head.methods if m in valid]
  if source == "consistent":
    return [m for m in methods if m in config.consistent.methods]
  return list(methods)


def two_head_training(teacher: ml_collections.ConfigDict,
                      two_head: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The training config of a job's two-headed source: the teachers' settings ``teacher`` with
  task ``'two_head'`` from the data and ``two_head``'s steps, energy weight and time weight."""
  c = ml_collections.ConfigDict(teacher.to_dict())
  c.task = "two_head"
  c.two_head.target = "data"
  c.two_head.energy_weight = two_head.energy_weight
  c.two_head.time_weight = two_head.time_weight
  c.training.num_steps = two_head.num_steps
  return c


def check_known_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                     job: str, sections: Sequence[str]) -> None:
  """A ``ValueError`` naming the first key of ``config`` (top level, or inside one of
  ``sections``) that ``reference`` (the job's full schema) does not have."""
  for key in config.keys():
    if key not in reference:
      raise ValueError(f"Unknown config key '{key}' for the {job} job; valid: "
                       f"{sorted(reference)}.")
  for section in sections:
    for key in config[section].keys():
      if key not in reference[section]:
        raise ValueError(f"Unknown config key '{section}.{key}'; valid: "
                         f"{sorted(reference[section])}.")


def time_consistent_distill(distill: ml_collections.ConfigDict,
                            consistent: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A job's distillation settings ``distill`` with its ``consistent`` energy source's overrides:
  the time-score term's ``time_*`` keys (METHOD.md §3b) and ``num_steps``."""
  c = ml_collections.ConfigDict(distill.to_dict())
  for key in ("time_weight", "time_target", "time_probes"):
    if key in consistent:
      c.distill[key] = consistent[key]
  c.training.num_steps = consistent.num_steps
  return c


def start_job(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Checks ``workdir`` (``checkpoint.check_workdir``: a directory that holds no run of another
  kind), creates it and returns it made absolute. The job's ``config.json`` is written here
  only on its first launch; a relaunch rewrites it in :func:`write_results`, once the job has
  run with it (a relaunch refused by a stage's checks leaves every file as it was)."""
  checkpoint.check_workdir(workdir, config)
  workdir = os.path.abspath(workdir)
  checkpoint.make_workdir(workdir)
  if checkpoint.read_config(workdir) is None:
    checkpoint.write_config(workdir, config)
  return workdir


def write_results(workdir: str, results: dict, table: str,
                  config: ml_collections.ConfigDict) -> None:
  """``results.json``, ``results.txt`` (the printed table), TensorBoard scalars of every
  numeric leaf of ``results`` (tag = its path joined by ``/``) and the ``config.json`` that
  produced them."""
  from clu import metric_writers
  checkpoint.write_config(workdir, config)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  scalars = {}

  def collect(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        collect(f"{prefix}/{k}" if prefix else str(k), v)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
      scalars[prefix] = float(node)

  collect("", results)
  writer = metric_writers.create_default_writer(os.path.join(workdir, "sampling"),
                                                just_logging=jax.process_index() > 0)
  writer.write_scalars(0, scalars)
  writer.flush()
  print(table, flush=True)
  with open(os.path.join(workdir, "results.txt"), "w") as f:
    f.write(table + "\n")


def metrics_table(labels: Sequence[Tuple[str, int]], cols: Sequence[str],
                  rows: Iterable[Tuple[Sequence[str], Dict[str, float]]], width: int) -> List[str]:
  """Fixed-width text lines: a header, then one line per ``(label values, metrics)`` row.

  ``labels`` are ``(column name, width)`` of the leading text columns; each of ``cols`` is a
  metric printed ``width`` wide with 4 decimals, or ``-`` where a row lacks it.
  """
  head = " ".join(f"{name:{w}s}" for name, w in labels)
  lines = [head + " " + " ".join(f"{c[:width]:>{width}s}" for c in cols)]
  for values, m in rows:
    text = " ".join(f"{v:{w}s}" for v, (_, w) in zip(values, labels))
    lines.append(text + " " + " ".join(f"{m[c]:{width}.4f}" if c in m else f"{'-':>{width}s}"
                                       for c in cols))
  return lines


# ---------------------------------------------------------------------------------------------
# Energies.


class LoadedEnergy(NamedTuple):
  """One energy of a job: ``fn(params, x, σ[, label]) -> scalar`` for one example, with its
  parameters, the data std σ_d it was trained with (its EDM preconditioning's) and its null label
  ∅ (``None``: unconditional). A closed-form energy has its own parameters (e.g. a mixture). A
  two-headed network also has ``heads(params, x, σ[, label]) -> (E, score head)``."""
  fn: Callable
  params: Any
  sigma_data: float
  null: Optional[int] = None
  heads: Optional[Callable] = None

  def target(self, params: Any = None, label=None) -> targets.Target:
    """``E(·, · | label)`` on ``params`` (default :attr:`params`; a jitted sampler passes its
    argument) as a one-energy :class:`~fkdiff.sampling.targets.Target` that carries σ_d, so that
    products, tempering and ``smc_sample`` know it (a two-headed network's energy carries its
    score head: :class:`fkdiff.models.HeadEnergy`)."""
    p = self.params if params is None else params
    extra = () if label is None else (label,)
    if self.heads is not None:
      return targets.as_target(HeadEnergy(lambda x, sigma: self.heads(p, x, sigma, *extra)),
                               self.sigma_data)
    return targets.as_target(lambda x, sigma: self.fn(p, x, sigma, *extra), self.sigma_data)


def load_energies(energy_dirs: Dict[str, str]) -> Dict[str, LoadedEnergy]:
  """``{name: LoadedEnergy}`` of the energy runs in ``energy_dirs`` (``{name: workdir}``), each
  from :func:`fkdiff.training.runs.load` (EMA parameters; a two-headed run with its heads), with
  the null label of a class-conditional run (its number of classes)."""
  out = {}
  for name, e_dir in energy_dirs.items():
    fn, params, sigma_data = runs.load_energy(e_dir)
    config = runs.read_run_config(e_dir)
    heads = runs.heads_fn(config, sigma_data)
    classes = int(config.model.get("num_classes", 0))
    out[name] = LoadedEnergy(fn, params, float(sigma_data), classes or None, heads)
  return out


# ---------------------------------------------------------------------------------------------
# The sampler section and the SMC it maps to.

# The SMC methods of every job: score-only weights with the section's rule and noise, exact-ratio
# weights, smc_sample's default scheme (weights.DEFAULT, docs/METHOD.md §4c), and exact-ratio
# weights proposing from two-headed networks' score heads (weights.HeadRatio, §4e; on energies
# without heads it is smc_ratio) and score-only weights on those heads' scores (unit noise, the
# section's rule; on energies without heads it is smc_score with unit noise).
ENERGY_SMC_METHODS = ("smc_score", "smc_ratio", "smc_default")   # a job's defaults
HEAD_METHODS = ("smc_heads", "smc_heads_score")        # for two-headed networks' sources
SMC_METHODS = ENERGY_SMC_METHODS + HEAD_METHODS
REJUVENATION = ("", "mala", "hmc")


def sampler_config(**overrides) -> ml_collections.ConfigDict:
  """The sampler keys every job shares (a job adds its own, e.g. how many particles):

  - ``num_steps``, ``sigma_min``, ``sigma_max``, ``rho``: the Karras levels σ_0 > … > σ_K;
  - ``ess_threshold``: resample when ESS < this · N (1: every level);
    ``resample_sigma_range``: ``()`` or ``(σ_lo, σ_hi)``, resample only there;
  - ``rejuvenation``: ``''``, ``'mala'`` or ``'hmc'`` after each resampling;
    ``rejuvenation_steps`` of them; ``rejuvenation_step_size`` ``h``: MALA's step ``h σ²``,
    HMC's leapfrog ``ε = sqrt(2h) σ`` (one leapfrog of it ≈ one MALA step), ``num_leapfrog``;
  - ``score_rule`` (``'trapezoid'`` | ``'left'``) and ``score_noise`` (``'unit'`` |
    ``'matched'``): ``smc_score``'s :class:`~fkdiff.sampling.ScoreOnly` (``smc_default`` is
    ``smc_sample``'s default, whatever these say).
  """
  c = ml_collections.ConfigDict()
  c.num_steps = 100
  c.sigma_min = 0.002
  c.sigma_max = 80.0
  c.rho = 7.0
  c.ess_threshold = 0.5
  c.resample_sigma_range = ()
  c.rejuvenation = ""
  c.rejuvenation_steps = 1
  c.rejuvenation_step_size = 0.05
  c.num_leapfrog = 5
  c.score_rule = "trapezoid"
  c.score_noise = "unit"
  c.update(overrides)
  return c


def validate_sampler(s: ml_collections.ConfigDict) -> None:
  """A ``ValueError`` naming the first invalid shared sampler key."""
  for key, valid in (("rejuvenation", REJUVENATION), ("score_rule", ("left", "trapezoid")),
                     ("score_noise", ("unit", "matched"))):
    if s[key] not in valid:
      raise ValueError(f"Unknown sampler.{key} {s[key]!r}; choose from {valid}.")
  if not (isinstance(s.num_steps, int) and s.num_steps >= 2):
    raise ValueError(f"sampler.num_steps must be an int >= 2, got {s.num_steps!r}.")
  if not 0 < s.sigma_min < s.sigma_max:
    raise ValueError(f"sampler.sigma_min must be in (0, sigma_max), got {s.sigma_min} and "
                     f"{s.sigma_max}.")
  if not 0 <= s.ess_threshold <= 1:
    raise ValueError(f"sampler.ess_threshold must be in [0, 1], got {s.ess_threshold}.")
  window = tuple(s.resample_sigma_range)
  if window and (len(window) != 2 or not 0 <= window[0] < window[1]):
    raise ValueError("sampler.resample_sigma_range must be () or (σ_lo, σ_hi) with "
                     f"0 <= σ_lo < σ_hi, got {window}.")
  for key in ("rejuvenation_steps", "num_leapfrog"):
    if not (isinstance(s[key], int) and s[key] >= 1):
      raise ValueError(f"sampler.{key} must be an int >= 1, got {s[key]!r}.")


def levels(s: ml_collections.ConfigDict) -> jax.Array:
  """The section's Karras levels, ``(num_steps,)`` decreasing."""
  return edm.karras_sigmas(s.num_steps, s.sigma_min, s.sigma_max, s.rho)


def scheme(method: str, s: ml_collections.ConfigDict):
  """The weight scheme of an SMC method of :data:`SMC_METHODS`."""
  if method == "smc_score":
    return weights_lib.ScoreOnly(rule=s.score_rule, noise=s.score_noise)
  if method == "smc_ratio":
    return weights_lib.ExactRatio()
  if method == "smc_default":
    return weights_lib.DEFAULT
  if method == "smc_heads":
    return weights_lib.HeadRatio()
  if method == "smc_heads_score":
    return weights_lib.ScoreOnly(rule=s.score_rule, scores="heads")
  raise ValueError(f"Unknown SMC method {method!r}; choose from {SMC_METHODS}.")


def smc_parts(method: str, s: ml_collections.ConfigDict) -> dict:
  """The ``smc_sample`` options of an SMC method under the sampler section ``s``:
  ``scheme``, ``resampling`` and ``rejuvenation``."""
  window = tuple(float(v) for v in s.resample_sigma_range) or None
  rejuvenation = None
  if s.rejuvenation:
    h = s.rejuvenation_step_size
    step = ((lambda sigma: h * sigma**2) if s.rejuvenation == "mala"
            else (lambda sigma: jnp.sqrt(2 * h) * sigma))
    # The score-head methods rejuvenate along the heads too (MALA: one forward pass a step).
    heads = method in HEAD_METHODS and s.rejuvenation == "mala"
    rejuvenation = mcmc.rejuvenation(s.rejuvenation, s.rejuvenation_steps, step,
                                     num_leapfrog=s.num_leapfrog,
                                     drift="heads" if heads else "gradient")
  return {"scheme": scheme(method, s), "rejuvenation": rejuvenation,
          "resampling": smc.Resampling("systematic", s.ess_threshold, window)}


def nfe_per_particle(method: str, s: ml_collections.ConfigDict, size: int, num_levels,
                     num_resampled=0):
  """Energy evaluations of one particle of an SMC run (value and gradient one, a Hessian-vector
  product two; per energy label): its scheme's per level (:meth:`evaluations_per_level` on
  ``size`` numbers per example) times ``num_levels``, plus, per resampling event, the
  rejuvenation's steps (HMC: ``num_leapfrog`` each), the scheme's re-evaluation of the moved
  particles (none where the MCMC's own values suffice: exact-ratio weights) and, for MALA along
  the score heads, the chains' start. (For the heads methods on two-headed networks an evaluation
  is one forward pass; elsewhere a value and gradient.)"""
  per_level = scheme(method, s).evaluations_per_level(size)
  per_event = 0
  if s.rejuvenation:
    per_step = s.num_leapfrog if s.rejuvenation == "hmc" else 1
    per_event = s.rejuvenation_steps * per_step + (per_level if method != "smc_ratio" else 0)
    per_event += method in HEAD_METHODS and s.rejuvenation == "mala"   # the chains' start
  return per_level * num_levels + per_event * num_resampled
