"""The documentation's code runs as written, its signature listings match the code, its links resolve.

The documentation is README.md and docs/*.md. Each of their ```python blocks is one test (id
``FILE:LINE``, the line of the block's first code line). The line just above a block's fence may
mark it (an HTML comment, invisible on GitHub):

- ``<!-- docs-test: signatures -->``: a listing of signatures, not run; every line of it that
  starts with a callable of ``fkdiff.sampling``, ``fkdiff.models`` or ``fkdiff`` (``smc.step(``,
  ``energy.bind(``, ``losses.make_dsm_loss(``, …) is compared with ``inspect.signature`` of that
  callable (parameter names, kinds and defaults);
- ``<!-- docs-test: skip (REASON) -->``: not run, e.g. ``skip (needs a GPU)``; the reason is
  required;
- no mark: run, in a namespace of its own (every example is self-contained).

Any other mark fails, so a block is never skipped silently. Code that cannot run in a test (cluster
commands, job scripts) is fenced as ``bash``/``sh``, outputs and tables as ``text``; every fence
names its language, so no Python hides in an unmarked fence. Examples that state an exact result
(a closed form) are held to it by :data:`CLAIMS`, and an example whose block is followed by a line
starting ``Output`` and a ```text block prints what that block shows (:func:`_same_output`: words
equal, numbers to 4 significant digits).
"""

import ast
import contextlib
import glob
import inspect
import io
import os
import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import fkdiff
import fkdiff.losses
import fkdiff.models
import fkdiff.sampling
from conftest import ROOT

DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                              for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
MARK = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->$")
RUN, SIGNATURES = "run", "signatures"
LANGUAGES = ("python", "bash", "sh", "text")
# Where a listed name is looked up, in order: `smc.init` is fkdiff.sampling.smc.init,
# `energy.bind` fkdiff.models.energy.bind, `losses.make_dsm_loss` fkdiff.losses.make_dsm_loss.
ROOTS = (fkdiff.sampling, fkdiff.models, fkdiff)


def _read(doc):
  with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
    return f.read().splitlines()


def _fences(lines):
  """``[(language, index of the opening fence, index of the closing fence)]`` of ``lines``."""
  fences, i = [], 0
  while i < len(lines):
    if lines[i].startswith("```"):
      end = lines.index("```", i + 1)
      fences.append((lines[i][3:].strip(), i, end))
      i = end
    i += 1
  return fences


def shown_output(doc, line):
  """The output the docs show for the ```python block whose code starts at ``line`` (1-based): the
  ```text block right after a line starting ``Output`` just below it, else None."""
  lines = _read(doc)
  end = lines.index("```", line - 1)
  if end + 2 < len(lines) and lines[end + 1].startswith("Output") and lines[end + 2] == "```text":
    close = lines.index("```", end + 3)
    return "\n".join(lines[end + 3:close])
  return None


NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^[-+]?(nan|inf)$")


def _same_output(printed: str, shown: str) -> bool:
  """Token by token (split at white space, brackets and commas): words equal, numbers within 1e-4
  relative (or 1e-6 absolute; NaN equals NaN): what one CPU prints for the docs' run."""
  split = lambda t: [w for w in re.split(r"[\s\[\](),]+", t) if w]
  a, b = split(printed), split(shown)
  if len(a) != len(b):
    return False
  for x, y in zip(a, b):
    if NUMBER.match(x) and NUMBER.match(y):
      fx, fy = float(x), float(y)
      if not (np.isnan(fx) and np.isnan(fy)) and not abs(fx - fy) <= max(1e-6, 1e-4 * abs(fy)):
        return False
    elif x != y:
      return False
  return True


def _blocks(doc):
  """``[(kind, line number of the code's first line, code)]`` of the ```python blocks of ``doc``;
  kind is ``'run'``, ``'signatures'`` or ``'skip (REASON)'``."""
  lines, blocks = _read(doc), []
  for language, start, end in _fences(lines):
    if language != "python":
      continue
    mark = MARK.match(lines[start - 1].strip()) if start else None
    kind = mark.group(1) if mark else RUN
    if kind not in (RUN, SIGNATURES) and not re.fullmatch(r"skip \(.+\)", kind):
      raise ValueError(f"{doc}:{start + 1}: unknown docs-test mark {kind!r}")
    blocks.append((kind, start + 2, "\n".join(lines[start + 1:end]) + "\n"))
  return blocks


ALL_BLOCKS = [(doc,) + block for doc in DOCS for block in _blocks(doc)]
RUN_BLOCKS = [b for b in ALL_BLOCKS if b[1] == RUN]


# ---------------------------------------------------------------------------- claims of examples

def _gaussian_product_claims(ns):
  """README.md: N(x; m_l, I) · N(x; m_r, I/2) has precision 3 → mean (m_l + 2 m_r) / 3 = (1/3, 1/3),
  and Z = N(m_l; m_r, 1.5 I) → log Z = −log(3π) − |m_l − m_r|² / 3."""
  result = ns["result"]
  np.testing.assert_allclose(np.asarray(fkdiff.sampling.weighted_mean(result)), [1 / 3, 1 / 3],
                             atol=0.1)
  log_z = -np.log(3 * np.pi) - (2.0**2 + 0.5**2) / 3
  assert abs(float(result.log_Z) - log_z) < 0.1, (float(result.log_Z), log_z)


def _api_example_claims(ns):
  """docs/api.md: the exact mean (0, 0.25); exact-ratio weights estimate log Ẑ, score-only ones
  report NaN; the parts give a weighted particle set as the driver does."""
  for name in ("result", "result_so", "result_parts"):
    got = np.asarray(fkdiff.sampling.weighted_mean(ns[name]))
    np.testing.assert_allclose(got, [0.0, 0.25], atol=0.15, err_msg=name)
  assert np.isfinite(ns["result"].log_Z) and np.isnan(ns["result_so"].log_Z)
  assert ns["result_parts"].particles.shape == (1024, 2)


def _hosts_example_claims(ns):
  """docs/multihost.md: the gathered particles of N(0, I)^2 ∝ N(0, I/2): variance 1/2 per axis."""
  particles = np.asarray(ns["particles"])
  assert particles.shape == (4096, 2) and np.all(np.isfinite(particles))
  w = np.asarray(fkdiff.sampling.normalized_weights(ns["distributed"].to_host(ns["res"].log_weights)))
  np.testing.assert_allclose(w @ particles**2, [0.5, 0.5], atol=0.1)


# (file, a name its example assigns) → the check run after that example.
CLAIMS = {
    ("README.md", "result"): _gaussian_product_claims,
    ("docs/api.md", "result_parts"): _api_example_claims,
    ("docs/multihost.md", "particles"): _hosts_example_claims,
}


def _assigned_names(code):
  return {t.id for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Assign)
          for t in node.targets if isinstance(t, ast.Name)}


# ---------------------------------------------------------------------------------------- tests

def test_the_docs_have_marked_listings_and_runnable_examples():
  kinds = {doc: [b[1] for b in ALL_BLOCKS if b[0] == doc] for doc in DOCS}
  assert kinds["README.md"].count(RUN) >= 1, kinds
  assert kinds["docs/api.md"].count(RUN) >= 1 and kinds["docs/api.md"].count(SIGNATURES) >= 4, kinds
  assert kinds["docs/multihost.md"].count(RUN) >= 1, kinds


@pytest.mark.parametrize("doc", DOCS)
def test_every_fence_names_its_language(doc):
  for language, start, _ in _fences(_read(doc)):
    assert language in LANGUAGES, f"{doc}:{start + 1}: fence {language!r}, not one of {LANGUAGES}"


def test_shown_outputs_are_compared():
  """The comparison itself: the docs' shown outputs are found, and a changed word or number (past
  4 significant digits) fails it."""
  shown = [(b[0], b[2]) for b in RUN_BLOCKS if shown_output(b[0], b[2]) is not None]
  assert {doc for doc, _ in shown} >= {"docs/api.md"}, shown
  text = "mean [0.00439375 0.25574154] ESS 2369.976 log Z nan"
  assert _same_output(text + "\n", text)
  assert _same_output("mean [0.0043938 0.2557415] ESS 2369.98 log Z nan", text)
  assert not _same_output(text.replace("2369.976", "2370.5"), text)
  assert not _same_output(text.replace("ESS", "ess"), text)
  assert not _same_output(text + " 1", text)


def test_every_claim_has_its_example():
  for (doc, name), _ in CLAIMS.items():
    assert any(b[0] == doc and name in _assigned_names(b[3]) for b in RUN_BLOCKS), (doc, name)


@pytest.mark.parametrize("doc,kind,line,code", RUN_BLOCKS,
                         ids=[f"{b[0]}:{b[2]}" for b in RUN_BLOCKS])
def test_example_runs_as_written(doc, kind, line, code, monkeypatch):
  del kind
  monkeypatch.chdir(ROOT)   # examples run from the repository root, like the README's commands.
  namespace, out = {"__name__": "docs_example"}, io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, f"{doc}:{line}", "exec"), namespace)  # pylint: disable=exec-used
  print(out.getvalue())
  shown = shown_output(doc, line)
  if shown is not None:
    assert _same_output(out.getvalue(), shown), (
        f"{doc}:{line} prints\n{out.getvalue()}\nbut the docs show\n{shown}")
  assigned = _assigned_names(code)
  for (claim_doc, name), check in CLAIMS.items():
    if claim_doc == doc and name in assigned:
      check(namespace)


# ------------------------------------------------------------------------------ signature listings

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
  """The callable ``name`` stands for under the first of :data:`ROOTS` that has it, or None."""
  for root in ROOTS:
    obj = root
    for part in name.split("."):
      obj = getattr(obj, part, None)
      if obj is None:
        break
    if obj is not None and callable(obj):
      return obj
  return None


def _signature_cases():
  cases = []
  for doc, kind, line, code in ALL_BLOCKS:
    if kind == SIGNATURES:
      cases += [(f"{doc}:{line} {name}", name, text) for name, text in _documented_calls(code)
                if _resolve(name) is not None]
  return cases


SIGNATURE_CASES = _signature_cases()


def test_listings_name_real_callables():
  names = {case[1] for case in SIGNATURE_CASES}
  for expected in ("smc_sample", "ScoreOnly", "ExactRatio", "Resampling", "rejuvenation",
                   "smc.build", "smc.init", "smc.step", "smc.finish", "tempered",
                   "annealed_mcmc_sample", "EnergyModel", "energy.energy", "energy.bind",
                   "losses.make_distill_loss", "losses.make_dsm_loss", "HeadRatio",
                   "TwoHeadModel", "losses.make_two_head_loss"):
    assert expected in names, (expected, sorted(names))


def _real_parameters(obj):
  params = inspect.signature(obj).parameters
  if inspect.isclass(obj) and issubclass(obj, nn.Module):   # fields every Flax module adds
    params = {k: p for k, p in params.items() if k not in ("parent", "name")}
  return params


@pytest.mark.parametrize("where,name,text", SIGNATURE_CASES, ids=[c[0] for c in SIGNATURE_CASES])
def test_signature_matches_the_code(where, name, text):
  documented = ast.parse("def f" + text[text.index("("):] + ": pass").body[0].args
  real = _real_parameters(_resolve(name))
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


# ------------------------------------------------------------------------------------------ links

def _anchor(heading):
  """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces → '-'."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  fenced, anchors = False, set()
  for line in lines:
    fenced ^= line.startswith("```")
    m = re.match(r"#+ (.*)", line)
    if m and not fenced:
      anchors.add(_anchor(m.group(1)))
  return anchors


@pytest.mark.parametrize("doc", DOCS + ["colabs/README.md", "colabs/digits_demo/README.md"])
def test_relative_links_resolve(doc):
  text = "\n".join(line for line in _read(doc) if not line.startswith("    "))
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"[a-z]+:", target):
      continue                                  # https://…, mailto:…
    path, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path)) if path else (
        os.path.join(ROOT, doc))
    assert os.path.exists(full), f"{doc}: link {target!r}: no such file"
    if anchor:
      assert anchor in _anchors(full), f"{doc}: link {target!r}: no such heading"
