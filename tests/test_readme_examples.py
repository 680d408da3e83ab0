"""README.md's API examples run as written, and its signature listings match the code.

The ```python blocks of README.md's "API" section and of its "SMC across hosts" subsection are
read in order. The line just above a block's fence may mark it (an HTML comment, invisible on
GitHub):

- ``<!-- readme-test: signatures -->``: a listing of signatures, not run; every line of it that
  starts with a callable of ``fkdiff.sampling`` (``smc.``/``mcmc.`` included) is compared with
  ``inspect.signature`` of that callable (parameter names, kinds and defaults);
- ``<!-- readme-test: skip (REASON) -->``: not run, e.g. ``skip (needs a GPU)`` or
  ``skip (needs the CIFAR-10 dataset)``; the reason is required;
- no mark: run, all blocks in one namespace (the hosts snippet uses the API example's target).

Any other mark fails the test, so a block is never skipped silently.
"""

import ast
import contextlib
import inspect
import io
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

import fkdiff.sampling
from conftest import ROOT

README = os.path.join(ROOT, "README.md")
MARK = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->$")
RUN, SIGNATURES = "run", "signatures"


def _section(lines, heading):
  """``(index, lines)``: the lines from ``heading`` (a markdown heading line) up to the next heading
  of its level or above (outside code fences), and the index of the first."""
  level = len(heading.split(" ", 1)[0])
  start, fenced = lines.index(heading), False
  for end in range(start + 1, len(lines)):
    fenced ^= lines[end].startswith("```")
    hashes = re.match(r"(#+) ", lines[end])
    if not fenced and hashes and len(hashes.group(1)) <= level:
      return start, lines[start:end]
  return start, lines[start:]


def _python_blocks(offset, lines):
  """``[(kind, README line number of the code's first line, code)]`` of the ```python blocks in
  ``lines`` (README lines from index ``offset``); kind is ``'run'``, ``'signatures'`` or
  ``'skip (REASON)'``."""
  blocks, i = [], 0
  while i < len(lines):
    if lines[i].strip() == "```python":
      mark = MARK.match(lines[i - 1].strip()) if i else None
      kind = mark.group(1) if mark else RUN
      if kind not in (RUN, SIGNATURES) and not re.fullmatch(r"skip \(.+\)", kind):
        raise ValueError(f"unknown README test mark {kind!r} above line {lines[i]!r}")
      end = lines.index("```", i + 1)
      blocks.append((kind, offset + i + 2, "\n".join(lines[i + 1:end]) + "\n"))
      i = end
    i += 1
  return blocks


def _blocks():
  with open(README, encoding="utf-8") as f:
    lines = f.read().splitlines()
  return (_python_blocks(*_section(lines, "## API"))
          + _python_blocks(*_section(lines, "### SMC across hosts")))


def test_the_readme_has_marked_listings_and_runnable_examples():
  kinds = [kind for kind, _, _ in _blocks()]
  assert kinds.count(RUN) >= 2 and kinds.count(SIGNATURES) >= 3, kinds


def test_readme_api_examples_run_as_written():
  namespace, out = {"__name__": "readme"}, io.StringIO()
  ran = 0
  with contextlib.redirect_stdout(out):
    for kind, line, code in _blocks():
      if kind != RUN:
        continue          # listings are checked below; 'skip (…)' blocks are skipped by name
      exec(compile(code, f"README.md:{line}", "exec"), namespace)  # pylint: disable=exec-used
      ran += 1
  print(out.getvalue())
  assert ran >= 2
  # The example's own claims: the exact mean (0, 0.25); exact-ratio weights estimate log Ẑ,
  # score-only weights report NaN; the parts give a weighted particle set as the driver does.
  exact_mean = np.array([0.0, 0.25])
  for name in ("result", "result_so", "result_parts"):
    got = np.asarray(fkdiff.sampling.weighted_mean(namespace[name]))
    np.testing.assert_allclose(got, exact_mean, atol=0.15, err_msg=name)
  assert np.isfinite(namespace["result"].log_Z) and np.isnan(namespace["result_so"].log_Z)
  assert namespace["result_parts"].particles.shape == (1024, 2)
  assert namespace["particles"].shape == (4096, 2) and np.all(np.isfinite(namespace["particles"]))


def _documented_calls(code):
  """``[(name, text)]``: each line of a listing that starts a call ``name(…)``, with the call
  text up to its closing parenthesis (continuation lines included)."""
  lines, calls, i = code.splitlines(), [], 0
  while i < len(lines):
    m = re.match(r"([A-Za-z_][\w.]*)\(", lines[i])
    if not m:
      i += 1
      continue
    text = lines[i] + "\n"
    i += 1
    while text.count("(") > text.count(")") and i < len(lines):
      text += lines[i] + "\n"
      i += 1
    depth = 0
    for pos, ch in enumerate(text):
      depth += (ch == "(") - (ch == ")")
      if ch == ")" and depth == 0:
        calls.append((m.group(1), text[:pos + 1]))
        break
  return calls


def _resolve(name):
  """The ``fkdiff.sampling`` callable ``name`` stands for, or None."""
  obj = fkdiff.sampling
  for part in name.split("."):
    obj = getattr(obj, part, None)
    if obj is None:
      return None
  return obj if callable(obj) else None


def _signature_cases():
  cases = []
  for kind, line, code in _blocks():
    if kind == SIGNATURES:
      cases += [(f"README.md:{line} {name}", name, text) for name, text in _documented_calls(code)
                if _resolve(name) is not None]
  return cases


def test_readme_listings_name_real_callables():
  names = {case[1] for case in _signature_cases()}
  for expected in ("smc_sample", "ScoreOnly", "ExactRatio", "Resampling", "rejuvenation",
                   "smc.build", "smc.init", "smc.step", "smc.finish", "tempered",
                   "annealed_mcmc_sample"):
    assert expected in names, (expected, sorted(names))


@pytest.mark.parametrize("where,name,text", _signature_cases(),
                         ids=[case[0] for case in _signature_cases()])
def test_readme_signature_matches_the_code(where, name, text):
  documented = ast.parse("def f" + text[text.index("("):] + ": pass").body[0].args
  real = inspect.signature(_resolve(name)).parameters
  posargs = documented.posonlyargs + documented.args
  doc = [(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in posargs]
  doc += [(a.arg, inspect.Parameter.KEYWORD_ONLY) for a in documented.kwonlyargs]
  kinds = lambda k: inspect.Parameter.POSITIONAL_OR_KEYWORD if k in (
      inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) else k
  assert doc == [(p.name, kinds(p.kind)) for p in real.values()], where
  defaults = dict(zip([a.arg for a in posargs][len(posargs) - len(documented.defaults):],
                      documented.defaults))
  defaults.update({a.arg: d for a, d in zip(documented.kwonlyargs, documented.kw_defaults) if d})
  namespace = dict(vars(fkdiff.sampling), jnp=jnp)
  for pname, param in real.items():
    has_default = param.default is not inspect.Parameter.empty
    assert (pname in defaults) == has_default, (where, pname)
    if has_default and not callable(param.default):
      value = eval(compile(ast.Expression(defaults[pname]), where, "eval"), namespace)  # pylint: disable=eval-used
      assert value == param.default, (where, pname, value, param.default)
