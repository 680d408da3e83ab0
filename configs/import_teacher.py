"""An imported diffusers teacher: teacher check → distillation → SMC (low temperature, and AND of
two labels for a class-conditional checkpoint). See fkdiff/experiments/imported.py and
docs/imported_teachers.md ("Distil it and run SMC").

Launch (the folder as fetched in docs/imported_teachers.md):
  python launch.py --config=configs/import_teacher.py --workdir=runs/ddpm_cifar10 \\
      --config.checkpoint=checkpoints/ddpm-cifar10-32
  python launch.py --config=configs/import_teacher.py:smoke --workdir=runs/import_smoke \\
      --config.checkpoint=<a tiny checkpoint folder>    # tests/test_import_teacher_job.py writes one

Data: the teacher's own samples (``dataset = ''``: 1024 Heun samples of 32 levels, drawn once into
the workdir), or ``--config.dataset=cifar10`` (tfds) for the teacher's training data.
Distillation: the energy's ``h`` is the imported network with its weights, 20,000 steps of batch
128 at learning rate 1e-5 (the teacher is already trained: the student starts next to it); a
CIFAR-10-sized network needs an accelerator (CPU step and SMC level times: benchmarks/RESULTS.md,
"Imported diffusers UNet"). SMC: β = 2 with ``smc_sample``'s default and the naive scaled score,
32 levels, 8 particles. The ``:smoke`` variant runs the same stages on a tiny checkpoint (8×8×3,
block_out_channels (8, 16), 2 classes; quality meaningless) with ``smc_score`` in place of
``smc_default``: ≈ 3 min on a shared 2-core CPU (measured 2026-12-03), nearly all compilation —
the distillation step's second-order autodiff through the UNet ≈ 75 s, each SMC row ≈ 25 s
(``smc_default`` ≈ 60 s a row), the teacher samples ≈ 25 s.
"""

from fkdiff.experiments.imported import job_config


def get_config(variant: str = ""):
  if variant not in ("", "smoke"):
    raise ValueError(f"Unknown variant {variant!r}; use '' or 'smoke'.")
  c = job_config()
  d = c.distill
  d.data.batch_size = 128
  d.optim.update(learning_rate=1e-5, warmup_steps=500, decay="constant")
  d.teacher.log_asymmetry = False   # an extra jvp+vjp per example; enable to inspect.
  d.training.update(num_steps=20000, log_every=500, checkpoint_every=2000, sample_every=0)
  d.eval.num_samples = 0            # the job samples the energy itself.
  if variant == "smoke":
    c.teacher_samples.update(num=16, steps=3, batch=16)
    c.check.num = 4
    d.data.batch_size = 4
    d.optim.warmup_steps = 1
    d.training.update(num_steps=2, log_every=1, checkpoint_every=2, quick_compile=True)
    # smc_score (unit noise): value and gradient only. smc_default's Hessian-shaped proposal and
    # matched noise differentiate the U-Net twice more: ≈ 60 s of compilation per row here.
    c.low_temperature.methods = ("smc_score", "naive")
    c.conjunction.methods = ("smc_score",)
    c.sampler.update(num_steps=4, num_particles=4, quick_compile=True)
    c.eval.grid_samples = 4
  return c
