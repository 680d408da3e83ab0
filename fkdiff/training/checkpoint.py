"""Checkpoints with orbax: periodic saves, keep-last-k, resume, and loading a finished run.

A workdir holds ``config.json`` (the resolved config of the run) and ``checkpoints/<step>/``.
Errors name the problem and the fix: a workdir of another model, an unreadable checkpoint,
a teacher workdir that does not exist.

**Integrity.** Orbax writes a step into a temporary directory and renames it when complete
(atomic on a POSIX filesystem; ``commit_success.txt`` marks completion on object stores), so a
save killed half-way leaves no step behind. Nothing in orbax checks the *contents* later: every
save here records a SHA-256 digest of ``params`` and ``ema_params`` in the step's metadata
(:func:`save`), and both restore paths (:func:`restore_latest` for a resuming job,
:func:`load_run` for a finished run) compare the restored arrays with it
(:func:`verify_digests`): a flipped bit, or arrays swapped in from another step, is a
``CheckpointError`` naming the step, and so is a step whose metadata file is gone. Steps saved
without digests (older runs) are not checked.
"""

import hashlib
import json
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np
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


DIGEST_KEYS = ("params", "ema_params")
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"   # orbax's per-step metadata (holds the digests)


def tree_digest(tree) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes (of its first addressable shard:
  the full array for the replicated parameters of a run)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _parts(state) -> Mapping[str, Any]:
  return state if isinstance(state, Mapping) else state._asdict()


def save(manager: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
  """``manager.save`` of a training state with the digests of its parameters (module docstring)."""
  parts = _parts(state)
  digests = {k: tree_digest(parts[k]) for k in DIGEST_KEYS if k in parts}
  return manager.save(step, args=ocp.args.StandardSave(state), force=force,
                      custom_metadata={"digests": digests})


def verify_digests(manager: ocp.CheckpointManager, step: int, restored) -> None:
  """Raises CheckpointError if a restored part (``params`` / ``ema_params``) differs from the
  digest saved with ``step``; steps saved without digests pass."""
  if not (manager.directory / str(step) / STEP_METADATA_FILE).exists():
    raise CheckpointError(
        f"Checkpoint step {step} in {manager.directory} has no {STEP_METADATA_FILE} (orbax writes "
        "one with every step): it was deleted or the step is not a complete checkpoint, and its "
        "digests cannot be checked. Remove that step's directory to resume from an earlier one.")
  saved = (manager.metadata(step).custom_metadata or {}).get("digests", {})
  parts = _parts(restored)
  for key, digest in saved.items():
    if key in parts and tree_digest(parts[key]) != digest:
      raise CheckpointError(
          f"Checkpoint step {step} in {manager.directory} is corrupt: its {key} differ from the "
          "digest recorded when it was saved. Remove that step's directory to resume from an "
          "earlier one, or retrain.")


def latest_step(workdir: str) -> Optional[int]:
  """The newest finalized checkpoint step in ``workdir``, or ``None`` (reads no arrays).

  A directory listing, never a ``CheckpointManager``: in a multi-process job a manager's
  constructor is a barrier, and this is called where processes can see the workdir at different
  moments (one process may already have created ``checkpoints/``), so a manager here would give
  the processes different barrier sequences and hang the job.
  """
  steps = ocp.utils.checkpoint_steps(checkpoint_dir(workdir))
  return max(steps) if steps else None


def read_config(workdir: str) -> Optional[ml_collections.ConfigDict]:
  """The ``config.json`` of a run's workdir, or ``None`` if there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def run_kind(config: ml_collections.ConfigDict) -> str:
  """What a workdir's ``config.json`` says it holds: ``"a toy2d job"``, ``"a teacher run"``, …"""
  job = config.get("job")
  return f"a {job} job" if job else f"a {config.get('task', 'training')} run"


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Checks, before anything is written, that ``workdir`` can hold ``config``'s run: it is (or
  can be made) a directory, and it holds no run of another kind (a job's workdir is never a
  teacher's, nor a teacher's a distillation's).

  Raises:
    CheckpointError: one line naming the path and the fix.
  """
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = "is a file" if existing == path else f"is inside the file {existing}"
    raise CheckpointError(f"--workdir {workdir} {where}, not a directory: pass a directory "
                          "path (it is created if missing).")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise CheckpointError(f"--workdir {workdir} is not writable (no write permission on "
                          f"{existing}): pass a directory you can write to.")
  saved = read_config(path) if existing == path else None
  if saved is not None and run_kind(saved) != run_kind(config):
    raise CheckpointError(
        f"The workdir {workdir} holds {run_kind(saved)}; this is {run_kind(config)}, which would "
        "overwrite its files. Use a fresh --workdir (nothing was written).")


def make_workdir(workdir: str) -> None:
  """Creates ``workdir``; a CheckpointError naming it if the filesystem refuses."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise CheckpointError(f"Cannot create --workdir {workdir}: {e.strerror}. Pass a directory "
                          "you can write to.") from None


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config as ``workdir/config.json`` (process 0 only)."""
  if jax.process_index() != 0:
    return
  make_workdir(workdir)
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
_OBJECTIVE_KEYS = ("seed", "data", "diffusion", "distill", "teacher", "optim", "two_head")
_PATH_KEYS = ("teacher.workdir", "teacher.diffusers", "data.data_dir", "data.image_dir",
              "data.array_file")
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
        f"Cause: {type(e).__name__}: {first_line(e)}") from e
  verify_digests(manager, step, state)
  return state, step


def first_line(error: BaseException) -> str:
  """An exception's message cut to its first line (orbax's and TensorStore's run to dozens)."""
  text = str(error).strip().splitlines()
  return text[0][:300] if text else ""


def load_run(workdir: str, sharding: Optional[jax.sharding.Sharding] = None,
             parts: Optional[Sequence[str]] = None):
  """The resolved config and the latest checkpoint of a finished run, on the current devices:
  the one restore path of a finished run (:func:`fkdiff.training.runs.restore_params` is this
  with ``parts=("ema_params",)``; a training job resumes through :func:`restore_latest`).

  The checkpoint may have been written on any number of devices or processes.

  Args:
    workdir: the run's workdir.
    sharding: where to place every restored array (default: replicated over all devices).
    parts: the top-level entries to restore (e.g. ``("ema_params",)``: nothing else is read);
      default all.
  Returns:
    ``(config, tree, step)`` with ``tree`` the saved state (or its ``parts``) as nested dicts
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
  step = latest_step(workdir)
  if step is None:
    raise CheckpointError(f"{workdir} has no checkpoint yet; let its training run finish.")
  with ocp.CheckpointManager(checkpoint_dir(workdir),
                             item_handlers=ocp.PyTreeCheckpointHandler()) as manager:
    try:
      metadata = manager.item_metadata(step).tree
      abstract = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
          {k: v for k, v in metadata.items() if parts is None or k in parts})
      tree = manager.restore(step, args=ocp.args.PyTreeRestore(
          item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True))
    except Exception as e:  # orbax raises several types for missing, corrupt and foreign data.
      raise CheckpointError(
          f"Cannot read checkpoint step {step} of {workdir}: it is unreadable (corrupt or "
          f"partially written) or not an fkdiff checkpoint. Cause: {type(e).__name__}: "
          f"{first_line(e)}") from e
    verify_digests(manager, step, tree)
  return config, tree, step
