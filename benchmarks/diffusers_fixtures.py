"""fkdiff's diffusers ``UNet2DModel`` and DDPM/DDIM denoiser against diffusers' own; writes the
fixtures of tests/test_diffusers_import.py.

Three random-weight ``UNet2DModel``s (``block_out_channels=(8, 16)``, ``layers_per_block=1``, so
the fixtures stay under 1 MB) cover every supported block type and option: ``uncond`` (DDPM's
CIFAR-10 style: DownBlock2D + AttnDownBlock2D, ``flip_sin_to_cos=False``, ``freq_shift=1``),
``class_cond`` (10 classes, AttnDownBlock2D + DownBlock2D, ``scale_shift``, 2–4 heads, mid block
scale √2, ``downsample_padding=0``) and ``options`` (no mid-block attention, centred input, mish,
``time_embedding_dim``, ``attn_norm_num_groups``). Each is saved with ``save_pretrained`` under
``tests/data/diffusers/<name>/`` and run by PyTorch on inputs drawn from :func:`inputs` (NumPy, so
the test regenerates them): the first two at 32×32 and 64×64, at integer and fractional timesteps.
Three scheduler configs (DDPM linear/epsilon, DDPM scaled_linear/v_prediction, DDIM
squaredcos_cap_v2/sample; written by diffusers' ``save_config``) give the scheduler's own one-step
``pred_original_sample`` on ``uncond``'s output at three grid timesteps (errors per timestep,
relative to that timestep's largest ``x̂_0``: at ``t = T−1`` it is ~σ_max times the others). Every array the test compares
with is in ``tests/data/diffusers/parity.npz``.

Needs PyTorch and diffusers (the ``import`` extra) besides fkdiff's own dependencies::

  pip install -e '.[import]'
  python benchmarks/diffusers_fixtures.py            # report fkdiff's errors only
  python benchmarks/diffusers_fixtures.py --write    # and (re)write the fixtures
"""

import argparse
import os
import shutil
import tempfile

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from fkdiff.models import imported

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "data", "diffusers")
SMALL = dict(block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1, in_channels=3,
             out_channels=3)
MODELS = {
    "uncond": dict(SMALL, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "UpBlock2D"), flip_sin_to_cos=False,
                   freq_shift=1, attention_head_dim=None, norm_eps=1e-6),
    "class_cond": dict(SMALL, down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D"), num_class_embeds=10,
                       resnet_time_scale_shift="scale_shift", attention_head_dim=4,
                       mid_block_scale_factor=2**0.5, downsample_padding=0),
    "options": dict(SMALL, block_out_channels=(8, 8), down_block_types=("DownBlock2D",
                    "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                    add_attention=False, center_input_sample=True, act_fn="mish",
                    time_embedding_dim=24, attn_norm_num_groups=2),
}
# (model, side, timesteps, labels, seed of the inputs): integer and fractional timesteps.
CASES = (("uncond", 32, (0.0, 17.5, 999.0), None, 1),
         ("uncond", 64, (250.0, 613.0), None, 2),
         ("class_cond", 32, (3.0, 500.0, 998.5), (3, 7, 0), 3),
         ("class_cond", 64, (90.0, 871.0), (9, 1), 4),
         ("options", 32, (42.0, 777.0), None, 5))
# (name, scheduler class, its config, seed of x_t): the wrapper checks, on `uncond`.
SCHEDULERS = (
    ("ddpm_linear_epsilon", DDPMScheduler, dict(beta_schedule="linear",
                                                prediction_type="epsilon"), 6),
    ("ddpm_scaled_linear_v", DDPMScheduler, dict(beta_schedule="scaled_linear",
                                                 beta_start=0.00085, beta_end=0.012,
                                                 prediction_type="v_prediction"), 7),
    ("ddim_cosine_sample", DDIMScheduler, dict(beta_schedule="squaredcos_cap_v2",
                                               num_train_timesteps=500,
                                               prediction_type="sample"), 8),
)


def inputs(seed: int, shape) -> np.ndarray:
  """The float32 NHWC inputs of a case: standard normal from ``np.random.default_rng(seed)``."""
  return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def random_model(config: dict, seed: int) -> UNet2DModel:
  """A ``UNet2DModel`` with PyTorch's initialisation of its weights, and 1-D parameters redrawn so
  none keeps its identity value: norm scales in U(0.5, 1.5), biases N(0, 0.1²)."""
  torch.manual_seed(seed)
  model = UNet2DModel(**config).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and "norm" in name and name.endswith("weight"):
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      elif p.ndim == 1:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
  return model


def torch_output(model, x, timesteps, labels) -> np.ndarray:
  sample = torch.from_numpy(x).permute(0, 3, 1, 2)
  t = torch.tensor(timesteps, dtype=torch.float32)
  lab = None if labels is None else torch.tensor(labels)
  with torch.no_grad():
    out = model(sample, t, class_labels=lab).sample
  return out.permute(0, 2, 3, 1).numpy()


def _rel(ours, theirs) -> float:
  return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--write", action="store_true", help="write tests/data/diffusers/")
  args = parser.parse_args()
  out_dir = FIXTURES if args.write else tempfile.mkdtemp()
  if args.write and os.path.isdir(out_dir):
    shutil.rmtree(out_dir)
  fixture = {}
  models = {}
  for i, (name, config) in enumerate(MODELS.items()):
    models[name] = random_model(config, seed=10 + i)
    models[name].save_pretrained(os.path.join(out_dir, name))

  print("UNet2DModel outputs, max |fkdiff - diffusers| / max |diffusers|:")
  for name, side, timesteps, labels, seed in CASES:
    x = inputs(seed, (len(timesteps), side, side, 3))
    theirs = torch_output(models[name], x, list(timesteps), labels)
    config, params = imported.load_diffusers_unet(os.path.join(out_dir, name))
    ours = imported.UNet2DModel(config).apply(params, x, np.asarray(timesteps, np.float32),
                                              None if labels is None else np.asarray(labels))
    key = f"{name}_{side}"
    print(f"  {key:14s} t={timesteps}: {_rel(ours, theirs):.2e} (max |out| "
          f"{np.abs(theirs).max():.3g})")
    fixture.update({f"{key}_timesteps": np.asarray(timesteps, np.float32),
                    f"{key}_seed": np.asarray(seed), f"{key}_out": theirs.astype(np.float32)})
    if labels is not None:
      fixture[f"{key}_labels"] = np.asarray(labels, np.int32)

  print("denoiser vs the scheduler's pred_original_sample (uncond, 32x32):")
  for name, cls, config, seed in SCHEDULERS:
    scheduler = cls(clip_sample=False, **config)
    sched_dir = os.path.join(out_dir, "schedulers", name)
    scheduler.save_config(sched_dir)
    if cls is DDIMScheduler:
      scheduler.set_timesteps(50)
      grid = scheduler.timesteps.numpy()
      timesteps = [int(grid[0]), int(grid[len(grid) // 2]), int(grid[-1])]
    else:
      num = scheduler.config.num_train_timesteps
      timesteps = [num - 1, num // 3, 10]
    x_t = inputs(seed, (len(timesteps), 32, 32, 3))
    model_out = torch_output(models["uncond"], x_t, timesteps, None)
    x0 = np.stack([scheduler.step(torch.from_numpy(model_out[i:i + 1]).permute(0, 3, 1, 2),
                                  int(t), torch.from_numpy(x_t[i:i + 1]).permute(0, 3, 1, 2))
                   .pred_original_sample.permute(0, 2, 3, 1).numpy()[0]
                   for i, t in enumerate(timesteps)])
    teacher = imported.load_diffusers_teacher(os.path.join(out_dir, "uncond"), sched_dir)
    sigma = teacher.module.schedule.sigmas[timesteps]
    ours = teacher.denoise(x_t * np.sqrt(1 + sigma**2)[:, None, None, None], sigma)
    errors = ", ".join(f"{_rel(o, e):.2e}" for o, e in zip(np.asarray(ours), x0))
    print(f"  {name:22s} t={timesteps}: {errors} (each of max |x0| of its timestep)")
    fixture.update({f"sched_{name}_timesteps": np.asarray(timesteps, np.int32),
                    f"sched_{name}_seed": np.asarray(seed), f"sched_{name}_x0": x0})

  if args.write:
    path = os.path.join(out_dir, "parity.npz")
    np.savez_compressed(path, **fixture)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_dir) for f in fs)
    print(f"wrote {os.path.relpath(out_dir, ROOT)}/ ({total / 1024:.0f} KiB in all)")
  else:
    shutil.rmtree(out_dir)


if __name__ == "__main__":
  main()
