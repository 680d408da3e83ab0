"""Time-consistent distillation on the toy `unequal` mixture: plain vs the time-score term.

Run (after a full toy run, configs/toy2d.py, has trained the teacher):
  python benchmarks/time_consistent.py --teacher /tmp/runs/toy2d/teachers/unequal \
      --variants plain,noise:1,noise:5 [--steps 1500]

Distils the teacher (its EMA weights) into a teacher-initialised 'thornton' energy with the toy
job's distillation settings (configs/toy2d.py: AdamW 3e-4, 100 warm-up steps, cosine to 10 %,
clip 1, EMA 0.999, batch 512; the same loop as fkdiff.training.train without its logging), with
the time-score term of ``fkdiff.losses.distill`` at weight λ (``noise:λ``: target
``(d − ‖ε‖²)/σ``; ``teacher:λ``: ``−σ(‖s_T‖² + ∇·s_T)``, exact divergence in 2-D; ``plain``: λ = 0)
and reports, on the EMA parameters, for σ ∈ {0.05, 0.1, 0.3, 1}:
- the heat-residual spread between modes and over p_σ (``fkdiff.evaluation.time_consistency``),
- the inter-mode level error against the exact energy (nats),
- the relative score error to the exact score (at σ = 0.5, as the toy job's eval, and per σ),
- the training wall time per step (the loop runs in ``lax.scan`` chunks of 100 steps).
``--teacher`` may also be a ``.msgpack`` file written by ``--export`` (the teacher's EMA
parameters and data settings), for machines without the run's checkpoint.
"""

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from fkdiff.data import gmm, toy
from fkdiff.evaluation import time_consistency, toy_metrics
from fkdiff.losses import make_distill_loss
from fkdiff.models import MLP, EnergyModel, Gauge, energy as energy_lib, init_from_teacher
from fkdiff.models import make_denoiser

SIGMAS = (0.05, 0.1, 0.3, 1.0)


def load_teacher(path):
  """``(params, mixture_kwargs, model_kwargs)`` from a teacher run workdir or an export."""
  if path.endswith(".msgpack"):
    with open(path, "rb") as f:
      blob = serialization.msgpack_restore(f.read())
    meta = json.loads(bytes(blob["meta"]).decode())
    return blob["params"], meta["mixture_kwargs"], meta["model"]
  from fkdiff.training import runs
  config = runs.read_run_config(path)
  _, params, _ = runs.load_teacher(path)
  model = {k: config.model[k] for k in ("width", "depth", "emb_dim")}
  return jax.tree.map(np.asarray, params), config.data.mixture_kwargs.to_dict(), model


def schedule(lr, steps, warmup=100, final=0.1):
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                               optax.cosine_decay_schedule(lr, max(steps - warmup, 1), final)],
                              [warmup])


def run_variant(name, weight, target, t_params, mix, model_kwargs, steps, lr, batch, seed=0):
  sigma_data = gmm.data_std(mix)
  backbone = MLP(**model_kwargs)
  teacher_denoise = make_denoiser(backbone, sigma_data)
  model = EnergyModel(backbone, sigma_data)
  gauge = Gauge()
  k_init, k_gauge, k_train, k_data = jax.random.split(jax.random.key(seed), 4)
  params = init_from_teacher(model.init(k_init, jnp.zeros(2), jnp.ones(())), t_params)
  kwargs = {}
  if weight > 0:
    params = {**params, "gauge": gauge.init(k_gauge, jnp.ones(()))}
    kwargs = dict(time_weight=weight, student_energy_fn=functools.partial(energy_lib.energy,
                                                                          model),
                  gauge_fn=lambda p, s: gauge.apply(p["gauge"], s), time_target=target,
                  time_probes=0)
  denoise = lambda p, x, s, label=None: energy_lib.denoiser(model, p, x, s, label)
  teacher = lambda x, s, label=None: teacher_denoise(t_params, x, s, label)
  loss_fn = make_distill_loss(denoise, teacher, sigma_data, **kwargs)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule(lr, steps),
                                                               weight_decay=0.0))

  def step(carry, i):
    p, ema, opt = carry
    x = gmm.sample(mix, jax.random.fold_in(k_data, i), batch)[0]
    grads = jax.grad(lambda q: loss_fn(q, {"x": x}, jax.random.fold_in(k_train, i))[0])(p)
    upd, opt = tx.update(grads, opt, p)
    p = optax.apply_updates(p, upd)
    rate = jnp.minimum(0.999, (1.0 + i) / (10.0 + i))
    ema = optax.incremental_update(p, ema, 1.0 - rate)
    return (p, ema, opt), None

  chunk = 100
  run_chunk = jax.jit(lambda c, i0: jax.lax.scan(step, c, i0 + jnp.arange(chunk))[0])
  carry = (params, params, tx.init(params))
  t0 = time.perf_counter()
  carry = jax.block_until_ready(run_chunk(carry, 0))          # includes compile
  compile_and_first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for c in range(1, steps // chunk):
    carry = run_chunk(carry, c * chunk)
  jax.block_until_ready(carry)
  per_step = (time.perf_counter() - t0) / max(steps - chunk, 1)
  ema = carry[1]

  efn = lambda x, s: energy_lib.energy(model, ema, x, s)
  diag = jax.jit(lambda k: time_consistency.mixture_diagnostics(efn, mix, k, SIGMAS, 256))(
      jax.random.key(123))
  sfn = lambda x, s: energy_lib.score(model, ema, x, s)
  score = {s: float(jax.jit(lambda k: toy_metrics.relative_score_error(sfn, mix, s, k))(
      jax.random.key(5))) for s in (*SIGMAS, 0.5)}
  out = {"name": name, "weight": weight, "target": target, "steps": steps,
         "ms_per_step": 1e3 * per_step, "compile_s": compile_and_first,
         **{k: float(v) for k, v in diag.items()},
         **{f"score_rel_error/sigma_{s:g}": v for s, v in score.items()}}
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--teacher", default="/tmp/runs/toy2d/teachers/unequal")
  parser.add_argument("--variants", default="plain,noise:1,noise:5")
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--lr", type=float, default=3e-4)
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--export", default="", help="write the teacher as .msgpack and exit")
  parser.add_argument("--json", default="", help="also write the rows to this file")
  args = parser.parse_args()
  t_params, mix_kwargs, model_kwargs = load_teacher(args.teacher)
  if args.export:
    meta = json.dumps({"mixture_kwargs": mix_kwargs, "model": model_kwargs}).encode()
    with open(args.export, "wb") as f:
      f.write(serialization.msgpack_serialize(
          {"params": t_params, "meta": np.frombuffer(meta, np.uint8)}))
    return
  mix = toy.get_mixture("unequal", **mix_kwargs)
  print(f"# time-consistent distillation, jax {jax.__version__} {jax.devices()[0].platform}, "
        f"unequal {mix_kwargs}, MLP {model_kwargs}, {args.steps} steps, lr {args.lr}")
  rows = []
  for v in args.variants.split(","):
    v, _, st = v.partition("@")
    steps = int(st) if st else args.steps
    target, _, w = v.partition(":")
    weight = float(w) if w else 0.0
    row = run_variant(v + (f"@{steps}" if st else ""), weight, target if weight else "-",
                      t_params, mix, model_kwargs, steps, args.lr, args.batch)
    rows.append(row)
    print(json.dumps(row), flush=True)
  cols = [("mode spread r_E", "heat_residual_mode_spread"), ("std r_E", "heat_residual_std"),
          ("level err", "level_error"), ("score err", "score_rel_error")]
  print("\n| variant | ms/step | " + " | ".join(f"{c} σ={s:g}" for c, _ in cols for s in SIGMAS)
        + " | score err σ=0.5 |")
  print("|---|---|" + "---|" * (len(cols) * len(SIGMAS) + 1))
  for r in rows:
    vals = [r[f"{k}/sigma_{s:g}"] for _, k in cols for s in SIGMAS]
    print(f"| {r['name']} | {r['ms_per_step']:.2f} | " + " | ".join(f"{v:.3g}" for v in vals)
          + f" | {r['score_rel_error/sigma_0.5']:.4f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
