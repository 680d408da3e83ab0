"""Forward time of an imported diffusers ``UNet2DModel`` of CIFAR-10 size on this machine.

The configuration is ``google/ddpm-cifar10-32``'s (block_out_channels (128, 256, 256, 256),
layers_per_block 2, attention at 16×16, DDPM's ``flip_sin_to_cos=False``, ``freq_shift=1``),
written here by hand, with random weights: nothing is downloaded. Times
``jax.jit(UNet2DModel.apply)`` on a batch of 8 32×32×3 images (median of the timed calls, after
one compiling call)::

  python benchmarks/imported_unet.py [--batch 8] [--repeats 5]
"""

import argparse
import time

import jax
import numpy as np

from fkdiff.models.diffusers_unet import UNet2DConfig, UNet2DModel, init_params

DDPM_CIFAR10 = UNet2DConfig(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None, norm_eps=1e-6)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  params = init_params(DDPM_CIFAR10, jax.random.key(0))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  x = np.random.default_rng(0).standard_normal((args.batch, 32, 32, 3), dtype=np.float32)
  t = np.linspace(0, 999, args.batch).astype(np.float32)
  forward = jax.jit(UNet2DModel(DDPM_CIFAR10).apply)
  start = time.perf_counter()
  forward(params, x, t).block_until_ready()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    forward(params, x, t).block_until_ready()
    times.append(time.perf_counter() - start)
  print(f"DDPM CIFAR-10 UNet2DModel ({count / 1e6:.1f} M parameters), batch {args.batch}, "
        f"{jax.devices()[0].platform}: first call {compile_s:.1f} s, forward "
        f"{np.median(times) * 1e3:.0f} ms (median of {args.repeats}; min {min(times) * 1e3:.0f})")


if __name__ == "__main__":
  main()
