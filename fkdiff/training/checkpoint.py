"""Checkpoints with orbax: periodic saves, keep-last-k, resume, and loading a finished run.

A workdir holds ``config.json`` (the resolved config of the run) and ``checkpoints/<step>/``.
Errors name the problem and the fix: a workdir of another model, an unreadable checkpoint,
a teacher workdir that does not exist.
"""

import json
import os
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
# Sections whose change makes an existing checkpoint incompatible with the run.
_MODEL_KEYS = ("task", "model", "energy")
# Rematerialisation and dropout change how a step is computed, not the parameters: a run may
# resume with them set either way (and a run saved before dropout existed has no such key).
_COMPUTE_ONLY_KEYS = ("model.unet.remat_blocks", "energy.remat", "model.unet.dropout")


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable or belongs to a different model."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, keep: int, every: int) -> ocp.CheckpointManager:
  """An orbax ``CheckpointManager`` under ``workdir/checkpoints`` keeping the last ``keep``."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(every, 1),
                                         create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def latest_step(workdir: str) -> Optional[int]:
  """The newest checkpoint step in ``workdir``, or ``None`` (reads no arrays)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  with ocp.CheckpointManager(checkpoint_dir(workdir)) as manager:
    return manager.latest_step()


def read_config(workdir: str) -> Optional[ml_collections.ConfigDict]:
  """The ``config.json`` of a run's workdir, or ``None`` if there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config as ``workdir/config.json`` (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w") as f:   # atomic: other processes may be reading the old one.
    f.write(config.to_json(indent=2))
  os.replace(path + ".tmp", path)


def _flat(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flat(v, prefix + k + ".")
    else:
      yield prefix + k, v


def _saved_diffs(workdir: str, config: ml_collections.ConfigDict, sections, ignore,
                 skip_missing: bool) -> list:
  """``"key: saved in the workdir, new now"`` for every leaf of ``config``'s ``sections`` whose
  value differs from the workdir's ``config.json`` (none without one). ``ignore(key, new)``
  excludes a leaf; ``skip_missing`` skips leaves the saved config lacks (else they read None)."""
  saved = read_config(workdir)
  if saved is None:
    return []
  old = dict(_flat(json.loads(saved.to_json())))
  new = json.loads(config.to_json())
  return [f"{k}: {old.get(k)!r} in the workdir, {v!r} now"
          for key in sections for k, v in _flat({key: new.get(key)})
          if old.get(k) != v and not (skip_missing and k not in old) and not ignore(k, v)]


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises ``CheckpointError`` if ``workdir`` holds a run of a different model than ``config``."""
  diffs = _saved_diffs(workdir, config, _MODEL_KEYS, lambda k, v: k in _COMPUTE_ONLY_KEYS,
                       skip_missing=False)
  if diffs:
    raise CheckpointError(
        f"The workdir {workdir} holds a run of a different model ({'; '.join(diffs)}). "
        "Use a fresh --workdir, or restore the original settings to resume that run.")


# What a stage trains towards besides its architecture: a job reusing a stage's checkpoint must
# have asked for the same objective. Paths may move; a key the saved run lacks (written before
# the key existed) is not compared.
_OBJECTIVE_KEYS = ("seed", "data", "diffusion", "distill", "teacher", "optim")
_PATH_KEYS = ("teacher.workdir", "data.data_dir", "data.image_dir")
# Keys whose 0 means "resolved at training time" (train.recorded_config writes the value used).
_RESOLVED_KEYS = ("data.sigma_data",)


def check_same_objective(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises ``CheckpointError`` if ``workdir`` holds a run trained with other data, diffusion,
  loss, teacher settings, optimiser or seed than ``config`` asks for (not its length)."""
  diffs = _saved_diffs(workdir, config, _OBJECTIVE_KEYS,
                       lambda k, v: k in _PATH_KEYS or (k in _RESOLVED_KEYS and v == 0),
                       skip_missing=True)
  if diffs:
    raise CheckpointError(
        f"The workdir {workdir} holds a run trained with other settings ({'; '.join(diffs)}). "
        "Its checkpoint would be reused as if it were this run: use a fresh --workdir, remove "
        f"{workdir}, or restore the original settings.")


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any):
  """Restores the newest checkpoint into the structure of ``abstract_state``.

  Returns:
    ``(state, step)``, or ``(None, None)`` when the manager holds no checkpoint.
  Raises:
    CheckpointError: when the newest checkpoint cannot be read or does not fit the model.
  """
  step = manager.latest_step()
  if step is None:
    return None, None
  try:
    state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except Exception as e:  # orbax raises several types for shape, structure and I/O problems.
    older = [s for s in manager.all_steps() if s < step]
    fix = (f"Remove {os.path.join(str(manager.directory), str(step))} to resume from step "
           f"{max(older)}" if older else "Use a fresh --workdir")
    raise CheckpointError(
        f"Cannot restore checkpoint step {step} from {manager.directory}: it is unreadable "
        f"(corrupt or partially written) or was written by a different model. {fix}. "
        f"Cause: {type(e).__name__}: {str(e)[:500]}") from e
  return state, step


def load_run(workdir: str, sharding: Optional[jax.sharding.Sharding] = None):
  """The resolved config and the latest checkpoint of a finished run, on the current devices.

  Used to load a frozen teacher, or to inspect a run. The checkpoint may have been written on any
  number of devices or processes.

  Args:
    workdir: the run's workdir.
    sharding: where to place every restored array (default: replicated over all devices).
  Returns:
    ``(config, tree, step)`` with ``tree`` the saved state as nested dicts
    (``{'params', 'ema_params', 'opt_state', 'step'}``).
  Raises:
    CheckpointError: if the workdir, its config or its checkpoints are missing or unreadable.
  """
  if not workdir or not os.path.isdir(workdir):
    raise CheckpointError(f"Run workdir {workdir!r} does not exist. Train it first (see "
                          "configs/toy2d_teacher.py) and pass its --workdir.")
  config = read_config(workdir)
  if config is None:
    raise CheckpointError(f"{workdir} has no {CONFIG_FILE}; it is not an fkdiff run workdir.")
  if sharding is None:
    from fkdiff.training.parallel import data_mesh, replicated
    sharding = replicated(data_mesh())
  with ocp.CheckpointManager(checkpoint_dir(workdir),
                             item_handlers=ocp.StandardCheckpointHandler()) as manager:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(f"{workdir} has no checkpoint yet; let its training run finish.")
    try:
      metadata = manager.item_metadata(step).tree
      abstract = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata)
      tree = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:
      raise CheckpointError(f"Cannot read checkpoint step {step} of {workdir}: "
                            f"{type(e).__name__}: {str(e)[:500]}") from e
  return config, tree, step
