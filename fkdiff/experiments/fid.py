"""FID of a trained image model (teacher or distilled energy): the job behind ``configs/<x>.py:fid``.

Steps: load the FID Inception weights (a user-supplied file, :mod:`fkdiff.evaluation.inception`)
and the run's latest checkpoint (EMA parameters by default); reference statistics of the run's
dataset through the same pipeline (:mod:`fkdiff.evaluation.fid`), cached in the workdir, or a given
``.npz``; then ``num_samples`` samples (50k by default) in batches, each generated and embedded
by Inception in one jitted program sharded over every device (and process); FID. Conditional models
are sampled at labels drawn like the data's: uniform classes, or the attribute vectors of random
training images (CelebA); ``sampler.guidance`` ≠ 1 applies classifier-free guidance
``D_∅ + w (D_c − D_∅)``.

The features gathered so far are saved every ``save_every`` batches with the batch count: a killed
job relaunched with the same config resumes from there (batch ``i`` always uses the key
``fold_in(seed, i)``, so a resumed job computes the same FID as an uninterrupted one).

Outputs in the workdir: ``results.json`` / ``results.txt``, ``samples.png`` (the first samples),
``reference_stats.npz``, ``sample_stats.npz``, ``config.json``.
"""

import functools
import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fkdiff.diffusion import edm
from fkdiff.evaluation import fid as fid_lib
from fkdiff.evaluation import inception, plots
from fkdiff.experiments.common import start_job, write_results

SAMPLERS = ("heun", "euler_maruyama")


def job_config() -> ml_collections.ConfigDict:
  """Every key the FID job understands (see the ``:fid`` variant of the image configs)."""
  c = ml_collections.ConfigDict()
  c.job = "fid"
  c.seed = 0
  c.run_workdir = ""          # required: a finished teacher / distill / energy_dsm image run.
  c.use_ema = True
  c.inception_weights = ""    # required: the FID Inception .npz (fkdiff/evaluation/inception.py).
  c.num_samples = fid_lib.DEFAULT_NUM_SAMPLES
  c.batch_size = 500          # global; split over all devices.
  c.save_every = 10           # batches between saves of the features gathered so far.
  c.data_dir = ""             # overrides the run's data.data_dir ("" = the run's).
  c.image_dir = ""            # overrides the run's data.image_dir ("" = the run's).
  c.sampler = ml_collections.ConfigDict()
  c.sampler.name = "heun"     # 'heun' (EDM's deterministic sampler) or 'euler_maruyama'.
  c.sampler.num_steps = 18    # EDM: 18 Heun levels (35 NFE) at 32×32, 40 (79 NFE) at 64×64.
  c.sampler.sigma_min = 0.002
  c.sampler.sigma_max = 80.0
  c.sampler.rho = 7.0
  c.sampler.guidance = 1.0    # classifier-free guidance weight (1 = the conditional model).
  c.reference = ml_collections.ConfigDict()
  c.reference.stats = ""      # an .npz with mu/sigma; "" = compute from the run's dataset.
  c.reference.split = "train"
  c.reference.num_images = fid_lib.DEFAULT_NUM_SAMPLES   # first N images of the split (≤ all).
  c.grid_samples = 64
  return c


def validate_job_config(config: ml_collections.ConfigDict) -> None:
  """Unknown keys or a bad value: a ``ValueError`` naming it."""
  from fkdiff.training import validate_config
  validate_config(config, job_config())
  if config.sampler.name not in SAMPLERS:
    raise ValueError(f"Unknown sampler.name {config.sampler.name!r}; choose from {SAMPLERS}.")
  if not config.run_workdir:
    raise ValueError("Set --config.run_workdir=<a finished teacher or distill run>.")
  if config.num_samples < 2 or config.batch_size < 1:
    raise ValueError("num_samples must be >= 2 and batch_size >= 1.")


# ---------------------------------------------------------------------------------------------
# Sampling + features in one sharded program.

def _label_fn(run_config, label_table: Optional[np.ndarray]):
  """``labels(key, n)`` drawn like the data's, or ``None`` for an unconditional model."""
  from fkdiff.training.tasks import num_attributes
  if num_attributes(run_config) > 0:
    table = jnp.asarray(label_table, jnp.int32)
    return lambda key, n: table[jax.random.randint(key, (n,), 0, table.shape[0])]
  if run_config.model.num_classes > 0:
    return lambda key, n: jax.random.randint(key, (n,), 0, run_config.model.num_classes)
  return None


def _guided(denoise, params, label, null, w: float):
  """Per-example ``D(x, σ)`` at ``label`` with guidance weight ``w``."""
  if label is None:
    return lambda x, s: denoise(params, x, s)
  if w == 1.0:
    return lambda x, s: denoise(params, x, s, label)
  return lambda x, s: ((1 - w) * denoise(params, x, s, null) + w * denoise(params, x, s, label))


def make_generate(config, run_config, denoise, event_shape, sigma_data: float, mesh,
                  label_table=None):
  """``generate(params, inception_variables, key) -> (samples (B, H, W, C), features (B, 2048))``,
  jitted, the batch sharded over ``mesh``."""
  from fkdiff import models
  from fkdiff.sampling import reverse
  from fkdiff.training import parallel, tasks
  s, b = config.sampler, config.batch_size
  parallel.check_divisible(b, mesh, "batch_size")
  sigmas = edm.karras_sigmas(s.num_steps, s.sigma_min, s.sigma_max, s.rho)
  labels_of = _label_fn(run_config, label_table)
  null = models.null_label(run_config.model.num_classes, tasks.num_attributes(run_config))
  sharded = parallel.batch_sharded(mesh)

  def one(params, x0, label, key):
    den = _guided(denoise, params, label, null, s.guidance)
    if s.name == "heun":
      return reverse.heun_sample(den, x0[None], sigmas)[0]
    score = lambda x, sig: edm.score_from_denoiser(den(x, sig), x, sig)
    x = reverse.euler_maruyama_sample(key, score, x0[None], sigmas)[0]
    return den(x, sigmas[-1])   # final denoising step σ_min → 0.

  @functools.partial(jax.jit, out_shardings=(sharded, sharded))
  def generate(params, inception_variables, key):
    k_x, k_label, k_noise = jax.random.split(key, 3)
    x0 = jax.lax.with_sharding_constraint(
        reverse.prior_sample(k_x, b, event_shape, s.sigma_max, sigma_data), sharded)
    labels = None if labels_of is None else labels_of(k_label, b)
    keys = jax.random.split(k_noise, b)
    samples = jax.vmap(functools.partial(one, params), in_axes=(0, None if labels is None else 0,
                                                                0))(x0, labels, keys)
    return samples, fid_lib.batch_features(inception_variables, samples)

  return generate


# ---------------------------------------------------------------------------------------------
# Resumable accumulation of features.

def _fingerprint(config, run_step: int) -> str:
  keep = {k: v for k, v in config.to_dict().items() if k not in ("save_every", "grid_samples")}
  return json.dumps({"config": keep, "run_step": run_step}, sort_keys=True, default=str)


def _load_progress(workdir: str, fingerprint: str):
  path = os.path.join(workdir, "fid_progress.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    progress = json.load(f)
  if progress.get("fingerprint") != fingerprint:
    logging.warning("Ignoring saved FID features in %s: made with another config or checkpoint.",
                    workdir)
    return []
  features = np.load(os.path.join(workdir, "fid_features.npy"))
  return [features[i:i + progress["batch_size"]]
          for i in range(0, progress["batches"] * progress["batch_size"], progress["batch_size"])]


def _save_progress(workdir: str, fingerprint: str, chunks, batch_size: int) -> None:
  if jax.process_index() != 0:
    return
  np.save(os.path.join(workdir, "fid_features.npy.tmp.npy"), np.concatenate(chunks))
  os.replace(os.path.join(workdir, "fid_features.npy.tmp.npy"),
             os.path.join(workdir, "fid_features.npy"))
  with open(os.path.join(workdir, "fid_progress.json"), "w") as f:
    json.dump({"fingerprint": fingerprint, "batches": len(chunks), "batch_size": batch_size}, f)


# ---------------------------------------------------------------------------------------------

def reference(config, workdir: str, features, load_split) -> fid_lib.FeatureStats:
  """The reference statistics: the given file, or the run's dataset (``load_split(split)``;
  cached in the workdir)."""
  from fkdiff.data import images
  if config.reference.stats:
    return fid_lib.load_stats(config.reference.stats)
  cache = os.path.join(workdir, "reference_stats.npz")
  if os.path.exists(cache):
    print(f"Reference statistics: reusing {cache}.", flush=True)
    return fid_lib.load_stats(cache)
  arrays = load_split(config.reference.split)
  if jax.process_count() > 1:   # every process embeds its share; one fit of all of them.
    from jax.experimental import multihost_utils
    local = features(images.to_model_range(arrays["image"][:config.reference.num_images //
                                                           jax.process_count()]))
    feats = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, local.shape[-1])
    stats = fid_lib.feature_stats(feats)
    if jax.process_index() == 0:
      fid_lib.save_stats(cache, stats)
    return stats
  return fid_lib.reference_stats(arrays["image"], features, config.reference.num_images, cache)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The FID job; returns ``results.json``'s content."""
  from fkdiff.training import runs
  from fkdiff.data import images
  from fkdiff.training import distributed, parallel, tasks
  validate_job_config(config)
  inception_variables = inception.load_fid_weights(config.inception_weights)   # fail fast.
  run_config = runs.read_run_config(config.run_workdir)
  if run_config.data.name not in images.IMAGE_SHAPES:
    raise ValueError(f"FID is for image runs; {config.run_workdir} trained on "
                     f"{run_config.data.name!r}.")
  run = runs.load(config.run_workdir, use_ema=config.use_ema)
  for key in ("data_dir", "image_dir"):
    if config[key]:
      run_config.data[key] = config[key]
  workdir = start_job(config, workdir)
  mesh = parallel.data_mesh()
  params, run_step = run.params, run.step
  features_fn = fid_lib.make_feature_fn(inception_variables, config.batch_size)
  load_split = functools.cache(lambda split: images.load_arrays(run_config.data, split))
  ref = reference(config, workdir, features_fn, load_split)

  label_table = None
  if tasks.num_attributes(run_config) > 0:   # attribute vectors of real training images.
    label_table = load_split("train")["label"]
  load_split.cache_clear()   # the images are not needed while sampling.
  generate = make_generate(config, run_config, run.denoise_fn,
                           images.IMAGE_SHAPES[run_config.data.name], run.sigma_data, mesh,
                           label_table)
  fingerprint = _fingerprint(config, run_step)
  chunks = _load_progress(workdir, fingerprint)
  num_batches = -(-config.num_samples // config.batch_size)
  if chunks:
    print(f"Resuming FID sampling at batch {len(chunks)}/{num_batches}.", flush=True)
  key, start = jax.random.key(config.seed), time.time()
  first = len(chunks)
  for i in range(first, num_batches):
    samples, feats = distributed.to_host(generate(params, inception_variables,
                                                  jax.random.fold_in(key, i)))
    chunks.append(feats)
    if i == 0 and jax.process_index() == 0:
      plots.save_image_grid(samples[:config.grid_samples], os.path.join(workdir, "samples.png"))
    if (i + 1) % config.save_every == 0 or i + 1 == num_batches:
      _save_progress(workdir, fingerprint, chunks, config.batch_size)
      logging.info("FID sampling: batch %d/%d.", i + 1, num_batches)
  seconds = time.time() - start
  stats = fid_lib.feature_stats(np.concatenate(chunks)[:config.num_samples])
  if jax.process_index() == 0:
    fid_lib.save_stats(os.path.join(workdir, "sample_stats.npz"), stats)
  s = config.sampler
  nfe = (2 * s.num_steps - 1 if s.name == "heun" else s.num_steps) * (1 if s.guidance == 1 else 2)
  results = {"fid": fid_lib.fid(stats, ref), "num_samples": int(stats.n),
             "reference_images": int(ref.n), "run_workdir": config.run_workdir,
             "run_task": run_config.task, "run_step": int(run_step), "sampler": s.name,
             "sampler_levels": int(s.num_steps), "nfe_per_sample": int(nfe),
             "guidance": float(s.guidance),
             "samples_per_second": (num_batches - first) * config.batch_size / max(seconds, 1e-9)}
  table = (f"FID {results['fid']:.3f}  ({results['num_samples']} samples of the {run_config.task} "
           f"run at step {run_step}, {s.name} {s.num_steps} levels, guidance {s.guidance:g}; "
           f"reference: {results['reference_images']} images)")
  if jax.process_index() == 0:
    write_results(workdir, results, table, config)
  return results
