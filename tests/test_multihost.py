"""Multi-process JAX on one machine: 2 processes × 1 CPU device behave like 1 process × 2 devices.

One job (the same script in every process, see ``JOB``) trains the toy teacher, distils it into an
energy and runs sharded SMC. It runs three times, once each:

* ``killed``: 2 processes; process 1 is killed after the teacher's first checkpoint;
* ``relaunched``: the same 2-process command again, which resumes the teacher and finishes;
* ``reference``: 1 process with 2 fake devices (no ``jax.distributed``).

The tests compare their logs, checkpoints and outputs. Every subprocess has a hard timeout, so a
hang fails the test instead of blocking CI.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, fake_devices_flags
from fkdiff.training import checkpoint, distributed

HEARTBEAT_S = 5
TEACHER_STEPS, TEACHER_CKPT, TEACHER_LOG = 120, 40, 20
DISTILL_STEPS = 20
TIMEOUT_S = 600   # per run; each takes 1-2 min on 2 busy CPU cores (> 300 s measured when more
                  # jobs shared them), a hang fails the test.

JOB = textwrap.dedent(f"""
    import os, sys
    sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
    from fkdiff.training import distributed
    # Reads FKDIFF_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID; none set: one process.
    distributed.initialize(distributed.resolve_options(heartbeat_timeout_s={HEARTBEAT_S}))
    from absl import logging
    import jax, numpy as np
    from conftest import tiny_teacher_config
    from fkdiff.training import train_and_evaluate
    logging.set_verbosity(logging.INFO)    # the loss lines of clu's LoggingWriter.
    logging.use_absl_handler()
    logging.get_absl_handler().addFilter(lambda r: "orbax" not in r.pathname or r.levelno > 20)
    workdir = sys.argv[1]
    print(distributed.describe(), flush=True)

    def small_eval(c):
      c.eval.num_samples, c.eval.sample_steps = 128, 4
      return c

    with distributed.exit_promptly_on_error():
      teacher = small_eval(tiny_teacher_config(num_steps={TEACHER_STEPS},
          checkpoint_every={TEACHER_CKPT}, log_every={TEACHER_LOG}))
      print("STAGE teacher", flush=True)
      train_and_evaluate(teacher, os.path.join(workdir, "teacher"))
      student = small_eval(tiny_teacher_config(num_steps={DISTILL_STEPS},
          checkpoint_every={DISTILL_STEPS}, log_every=10))
      student.task = "distill"
      student.teacher.workdir = os.path.join(workdir, "teacher")
      print("STAGE distill", flush=True)
      train_and_evaluate(student, os.path.join(workdir, "distill"))
      if jax.process_count() > 1:   # SMC across processes (compared with 1 process in the test).
        from jax.sharding import Mesh
        from fkdiff.sampling import smc_sample
        from test_multihost import smc_problem
        key, potential, sigmas, n, kw = smc_problem()
        mesh = Mesh(np.asarray(jax.devices()), ("particles",))
        res = jax.jit(lambda k: smc_sample(k, potential, sigmas, n, (2,), mesh=mesh, **kw))(key)
        assert len(res.particles.sharding.device_set) == jax.device_count()
        out = distributed.to_host(dict(particles=res.particles, log_w=res.log_weights,
                                       log_Z=res.log_Z, resampled=res.info.resampled))
        if jax.process_index() == 0:
          np.savez(os.path.join(workdir, "smc.npz"), **out)
    print("JOB DONE", flush=True)
""")


def smc_problem():
  """The SMC problem of ``test_smc_sharding`` (a tempered product of two Gaussians, MALA), with
  exact-ratio weights (so that ``log Ẑ``, a cross-process reduction, is compared too)."""
  import jax.numpy as jnp
  from fkdiff.diffusion import karras_sigmas
  from fkdiff.sampling import ExactRatio, rejuvenation, targets
  e1 = lambda x, s: 0.5 * jnp.sum((x - 1.0)**2) / (1 + s**2)
  e2 = lambda x, s: 0.5 * jnp.sum((x + 1.0)**2) / (0.5 + s**2)
  potential = targets.product([targets.tempered(e1, 2.0), e2])
  kw = dict(sigma_data=1.0, scheme=ExactRatio(), rejuvenation=rejuvenation("mala"))
  return jax.random.key(3), potential, karras_sigmas(16, 0.002, 10.0), 128, kw


def _free_port() -> int:
  with contextlib.closing(socket.socket()) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(script, workdir, logdir, num_processes, cache=None):
  """Starts the job; ``num_processes=0`` is the 1-process, 2-device reference.

  With ``cache`` (a directory), JAX's persistent compilation cache is on: a relaunch reuses the
  programs its first launch compiled.
  """
  base = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep
              + os.path.join(ROOT, "tests"))
  for name in ("COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID", "DISTRIBUTED"):
    base.pop(distributed.ENV_PREFIX + name, None)
  if num_processes == 0:
    envs = [dict(base, XLA_FLAGS=fake_devices_flags(2))]
  else:
    port = _free_port()
    envs = [dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=1",
                 FKDIFF_COORDINATOR_ADDRESS=f"localhost:{port}",
                 FKDIFF_NUM_PROCESSES=str(num_processes), FKDIFF_PROCESS_ID=str(i))
            for i in range(num_processes)]
    if cache:
      envs = [dict(env, JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0") for env in envs]
  os.makedirs(logdir, exist_ok=True)
  procs = []
  for i, env in enumerate(envs):
    log = open(os.path.join(logdir, f"process_{i}.log"), "w")
    procs.append(subprocess.Popen([sys.executable, "-u", str(script), str(workdir)], cwd=ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT))
    log.close()
  return procs


def _wait(procs, timeout):
  """Return codes of ``procs``; kills them all (and fails) past ``timeout`` seconds."""
  deadline = time.time() + timeout
  try:
    return [p.wait(timeout=max(deadline - time.time(), 0.1)) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f"job still running after {timeout} s (hang)")


def _kill_all(procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


def _log(logdir, i=0):
  with open(os.path.join(logdir, f"process_{i}.log")) as f:
    return f.read()


def _losses(log_text):
  """``{(stage, step): loss}`` from the loss lines of clu's LoggingWriter."""
  out, stage = {}, None
  for line in log_text.splitlines():
    if line.startswith("STAGE "):
      stage = line.split()[1]
    m = re.search(r"\[(\d+)\] .*?\bloss=([-+.\deE]+)", line)
    if m:
      out[(stage, int(m.group(1)))] = float(m.group(2))
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs the three jobs (see module docstring); returns their directories and observations."""
  tmp = tmp_path_factory.mktemp("multihost")
  script = tmp / "job.py"
  script.write_text(JOB)
  multi, ref = tmp / "multi", tmp / "reference"
  # One job at a time: two busy cores are shared with the other test worker already.
  killed = _start(script, multi, tmp / "logs_killed", 2, cache=tmp / "cache")
  all_procs = list(killed)
  try:
    first_ckpt = multi / "teacher" / "checkpoints" / str(TEACHER_CKPT)
    deadline = time.time() + TIMEOUT_S
    while not first_ckpt.exists():
      if any(p.poll() is not None for p in killed) or time.time() > deadline:
        codes = [p.poll() for p in killed]
        pytest.fail(f"the 2-process job {'stalled' if codes == [None, None] else 'ended'} "
                    f"before its first checkpoint (return codes {codes}):\n"
                    + "\n".join(f"--- process {i}:\n" + _log(tmp / "logs_killed", i)[-3000:]
                                for i in range(2)))
      time.sleep(0.05)
    killed[1].send_signal(signal.SIGSTOP)   # freeze: process 0 blocks at its next collective.
    saved = sorted(int(s) for s in os.listdir(first_ckpt.parent) if s.isdigit())
    killed[1].kill()
    t0 = time.time()
    codes = _wait(killed, 60)
    exit_s = time.time() - t0
    relaunched = _start(script, multi, tmp / "logs_relaunched", 2, cache=tmp / "cache")
    all_procs += relaunched
    relaunch_codes = _wait(relaunched, TIMEOUT_S)
    reference = _start(script, ref, tmp / "logs_reference", 0)
    all_procs += reference
    reference_codes = _wait(reference, TIMEOUT_S)
  finally:
    _kill_all(all_procs)
  for name, rcs in (("relaunched", relaunch_codes), ("reference", reference_codes)):
    assert rcs == [0] * len(rcs), f"{name}: {rcs}\n" + _log(tmp / f"logs_{name}")[-4000:]
  return dict(multi=multi, ref=ref, tmp=tmp, saved_at_kill=saved, killed_codes=codes,
              exit_s=exit_s)


def test_options_come_from_flags_or_environment():
  env = {"FKDIFF_COORDINATOR_ADDRESS": "h:1", "FKDIFF_NUM_PROCESSES": "4",
         "FKDIFF_PROCESS_ID": "2"}
  o = distributed.resolve_options(environ=env)
  assert (o.enabled, o.coordinator_address, o.num_processes, o.process_id) == (True, "h:1", 4, 2)
  o = distributed.resolve_options(process_id=3, environ=env)
  assert o.process_id == 3                                     # a flag beats the environment
  assert not distributed.resolve_options(environ={}).enabled   # default: one process
  assert distributed.resolve_options(True, environ={}).coordinator_address is None  # detect
  assert not distributed.resolve_options(num_processes=1, environ={}).enabled
  with pytest.raises(ValueError, match="missing process_id.*FKDIFF_PROCESS_ID"):
    distributed.resolve_options(coordinator_address="h:1", num_processes=2, environ={})
  with pytest.raises(ValueError, match="process_id=2 must be in"):
    distributed.resolve_options(None, "h:1", 2, 2, environ={})


def test_launch_rejects_an_incomplete_multi_process_spec():
  proc = subprocess.run([sys.executable, "launch.py", "--config=configs/toy2d_teacher.py:smoke",
                         "--workdir=unused", "--num_processes=2", "--process_id=0"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode != 0 and "missing coordinator_address" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_killed_process_stops_the_others_and_a_relaunch_resumes(runs):
  assert runs["saved_at_kill"] and max(runs["saved_at_kill"]) < TEACHER_STEPS
  code, _ = runs["killed_codes"]
  assert code != 0, "process 0 kept going after process 1 died"
  assert runs["exit_s"] < 6 * HEARTBEAT_S, runs["exit_s"]
  log = _log(runs["tmp"] / "logs_killed")
  assert ("Process 0 of the job stopped" in log and "relaunch every process" in log
          or "JAX distributed service detected fatal errors" in log), log[-3000:]
  resumed = _log(runs["tmp"] / "logs_relaunched")
  m = re.search(r"Resumed from checkpoint step (\d+)", resumed)
  assert m and int(m.group(1)) >= TEACHER_CKPT, resumed[-3000:]


@pytest.mark.slow
def test_two_processes_train_and_distill_like_one_process_with_two_devices(runs):
  multi, ref = runs["multi"], runs["ref"]
  # Loss curve: before the kill from the first launch, after it from the relaunch.
  resumed_at = int(re.search(r"Resumed from checkpoint step (\d+)",
                             _log(runs["tmp"] / "logs_relaunched")).group(1))
  killed_log = _losses(_log(runs["tmp"] / "logs_killed"))
  curve = {k: v for k, v in killed_log.items() if k[0] == "teacher" and k[1] <= resumed_at}
  curve.update(_losses(_log(runs["tmp"] / "logs_relaunched")))
  expected = _losses(_log(runs["tmp"] / "logs_reference"))
  assert len(expected) == TEACHER_STEPS // TEACHER_LOG + DISTILL_STEPS // 10
  assert sorted(curve) == sorted(expected)
  np.testing.assert_allclose([curve[s] for s in sorted(curve)],
                             [expected[s] for s in sorted(curve)], rtol=1e-4)
  # Process 1 logged the same losses as process 0 (its writer only logs).
  assert _losses(_log(runs["tmp"] / "logs_relaunched", 1)) == _losses(
      _log(runs["tmp"] / "logs_relaunched", 0))
  for stage in ("teacher", "distill"):
    _, tree, step = checkpoint.load_run(str(multi / stage))   # this process: 1 device.
    _, tree_ref, step_ref = checkpoint.load_run(str(ref / stage))
    assert step == step_ref
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         rtol=2e-4, atol=2e-6),
                 tree["params"], tree_ref["params"])
    got = json.loads((multi / stage / "eval.json").read_text())
    want = json.loads((ref / stage / "eval.json").read_text())
    np.testing.assert_allclose(got["score_rel_error"], want["score_rel_error"], rtol=1e-3)


@pytest.mark.slow
def test_checkpoints_and_files_are_written_once_and_restore_on_one_process(runs):
  for stage, steps in (("teacher", {80, 120}), ("distill", {DISTILL_STEPS})):
    wd = runs["multi"] / stage
    assert steps <= {int(s) for s in os.listdir(wd / "checkpoints")}, os.listdir(wd / "checkpoints")
    leftovers = [s for s in os.listdir(wd / "checkpoints") if not s.isdigit()]
    assert not leftovers, leftovers                            # no half-written temp dirs
    events = [f for f in os.listdir(wd) if f.startswith("events.out.tfevents")]
    assert len(events) == (2 if stage == "teacher" else 1), events   # process 0, per launch
    assert not [f for f in os.listdir(wd) if f.endswith(".tmp")]
    config, tree, step = checkpoint.load_run(str(wd))        # 1 process, 1 device.
    assert jax.process_count() == 1 and int(tree["step"]) == step
    assert config.task == stage


@pytest.mark.slow
def test_smc_particles_across_two_processes_match_one_process(runs):
  multi = np.load(runs["multi"] / "smc.npz")
  assert multi["particles"].shape == (128, 2) and multi["resampled"].any()
  from fkdiff.sampling import smc_sample
  key, potential, sigmas, n, kw = smc_problem()
  one = jax.jit(lambda k: smc_sample(k, potential, sigmas, n, (2,), **kw))(key)   # unsharded
  want = {"particles": one.particles, "log_w": one.log_weights, "log_Z": one.log_Z}
  for name, value in want.items():
    np.testing.assert_allclose(multi[name], np.asarray(value), rtol=1e-4, atol=1e-4)
