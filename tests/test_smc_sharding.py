"""Particles sharded over 2 fake CPU devices give the same result as 1 device for the same key
(exact-ratio and score-only weights).

The 2-device run happens in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``
set before jax is imported (the main pytest process keeps its single device).
"""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import fake_devices_flags

SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from fkdiff.diffusion import karras_sigmas
    from fkdiff.sampling import smc_sample, targets
    from tests_smc_problem import SCHEMES, problem
    assert jax.device_count() == 2, jax.devices()
    key, potential, sigmas, n, kw = problem()
    mesh = Mesh(np.asarray(jax.devices()), ("particles",))
    out = {}
    for name, weights in SCHEMES.items():
      res = jax.jit(lambda k: smc_sample(k, potential, sigmas, n, (2,), mesh=mesh, scheme=weights,
                                         **kw))(key)
      assert len(res.particles.sharding.device_set) == 2, res.particles.sharding
      one = jax.jit(lambda k: smc_sample(k, potential, sigmas, n, (2,), scheme=weights, **kw))(key)
      out.update({f"{name}/particles": res.particles, f"{name}/log_w": res.log_weights,
                  f"{name}/log_Z": res.log_Z, f"{name}/resampled": res.info.resampled,
                  f"{name}/one_particles": one.particles})
    np.savez(sys.argv[1], **{k: np.asarray(v) for k, v in out.items()})
""")

PROBLEM = textwrap.dedent("""
    import jax, jax.numpy as jnp
    from fkdiff.diffusion import karras_sigmas
    from fkdiff.sampling import ExactRatio, ScoreOnly, rejuvenation, targets

    SCHEMES = {"exact": ExactRatio(), "score_only": ScoreOnly()}   # both weight schemes

    def problem():
      e1 = lambda x, s: 0.5 * jnp.sum((x - 1.0)**2) / (1 + s**2)
      e2 = lambda x, s: 0.5 * jnp.sum((x + 1.0)**2) / (0.5 + s**2)
      potential = targets.product([targets.tempered(e1, 2.0), e2])
      kw = dict(sigma_data=1.0, rejuvenation=rejuvenation("mala"))
      return jax.random.key(3), potential, karras_sigmas(24, 0.002, 10.0), 256, kw
""")


@pytest.mark.slow   # two subprocess SMC runs
def test_two_devices_match_one_device(tmp_path):
  (tmp_path / "tests_smc_problem.py").write_text(PROBLEM)
  script = tmp_path / "run2.py"
  script.write_text(SCRIPT)
  out = tmp_path / "out.npz"
  env = dict(os.environ, XLA_FLAGS=fake_devices_flags(2),
             JAX_PLATFORMS="cpu", PYTHONPATH=str(tmp_path) + os.pathsep
             + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  two = np.load(out)

  sys.path.insert(0, str(tmp_path))
  try:
    from tests_smc_problem import SCHEMES, problem  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(str(tmp_path))
  from fkdiff.sampling import smc_sample  # pylint: disable=import-outside-toplevel
  assert jax.device_count() == 1
  key, potential, sigmas, n, kw = problem()
  for name, weights in SCHEMES.items():
    one = jax.jit(lambda k: smc_sample(k, potential, sigmas, n, (2,), scheme=weights, **kw))(key)
    got = {k.split("/", 1)[1]: v for k, v in two.items() if k.startswith(name + "/")}
    assert got["resampled"].any(), name                 # global resampling was exercised
    # log Ẑ: a number under exact-ratio weights, NaN under score-only ones.
    assert np.isfinite(got["log_Z"]) == (name == "exact"), (name, got["log_Z"])
    for key_, want in (("particles", one.particles), ("log_w", one.log_weights),
                       ("log_Z", one.log_Z), ("one_particles", one.particles)):
      np.testing.assert_allclose(got[key_], np.asarray(want), rtol=1e-4, atol=1e-4,
                                 err_msg=f"{name} {key_}")
