"""Pieces shared by the end-to-end jobs: reusable training stages and result outputs."""

import json
import os
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import jax
import ml_collections
from absl import logging

from fkdiff.training import checkpoint


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


def train_models(config: ml_collections.ConfigDict, workdir: str, names: Sequence[str],
                 stage_config: Callable) -> Dict[str, Dict[str, str]]:
  """Runs (or reuses) a job's training stages: a teacher per model name and, for every
  distilled source of ``config.energies`` (:data:`ENERGY_FOLDERS`), its distillation of it.

  Args:
    config: the job's config (``teacher``, ``distill``, ``consistent`` and ``energies``).
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
  return out


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
