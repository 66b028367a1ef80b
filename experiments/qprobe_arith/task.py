"""The target-number task: prompts, a character tokenizer and an executable reward.

A prompt gives a target ``T`` and four digits (sorted), ``"17:1356="``; a
completion is an expression that uses each given digit exactly once, joined by
``+``, ``-`` or ``*`` (usual precedence, no brackets), then the end token
``";"``: ``"3*6-1*5;"``. The reward executes the check: the completion parses,
uses exactly the given digits and evaluates to ``T`` (1.0), anything else 0.0.

Unlike "write the answer" arithmetic, a prompt has many distinct correct
completions (orders of the operands and of the terms, other decompositions:
about 12 distinct strings per prompt), as a program-synthesis task has many
distinct correct programs (the Q-probe paper's MBPP setting).

The LMs learn the task from "worksheet" text (:class:`WorksheetText`): lines
``"17:1356=3*6-1*5;Y\\n"``, where a share of the expressions are wrong (another
expression of the same digits with another value) and the grader's mark
``Y``/``N`` follows the end token. A policy's completion stops at the end
token, so the mark is never sampled; it only shapes what the LM's hidden state
at the end token knows (the role unit tests and judged code play for a code LM).

The tokenizer maps each character to one id (0 is padding).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections.abc import Sequence

import numpy as np

from jaxweights.families.q_probe.policies import Tokens, pad_sequences

PAD = 0
CHARS = "0123456789+-*:=;YN\n"
EOS_CHAR = ";"  # ends an expression (the completion's last token)
GOOD, BAD = "Y", "N"  # the verdict marks of graded lines
NEWLINE = "\n"
VOCAB_SIZE = 20  # padding + 19 characters
OPS = "+-*"


def encode(text: str) -> list[int]:
  """Character ids (1-based; 0 is padding)."""
  try:
    return [CHARS.index(ch) + 1 for ch in text]
  except ValueError:
    bad = sorted(set(text) - set(CHARS))
    raise ValueError(f"characters {bad!r} are not in the task's alphabet {CHARS!r}.") from None


def decode(ids: Sequence[int]) -> str:
  """The inverse of :func:`encode`; padding and unknown ids are dropped."""
  return "".join(CHARS[i - 1] for i in ids if 1 <= i <= len(CHARS))


EOS_ID = encode(EOS_CHAR)[0]


@dataclasses.dataclass(frozen=True)
class Problem:
  """Reach ``target`` with each of ``digits`` (sorted) once."""

  digits: tuple[int, ...]
  target: int

  @property
  def prompt(self) -> str:
    return f"{self.target}:{''.join(map(str, self.digits))}="


@functools.cache
def expressions(digits: tuple[int, ...]) -> tuple[tuple[str, int], ...]:
  """Every ``(expression, value)`` over an ordering of ``digits`` and a choice of operators."""
  out = []
  for perm in sorted(set(itertools.permutations(digits))):
    for ops in itertools.product(OPS, repeat=len(digits) - 1):
      text = str(perm[0]) + "".join(o + str(d) for o, d in zip(ops, perm[1:]))
      out.append((text, evaluate(text)))
  return tuple(out)


_EXPR = re.compile(r"[1-9]([-+*][1-9])*")


def evaluate(text: str) -> int:
  """The value of a digit expression with ``+ - *`` (``*`` first), or raise ValueError."""
  if not _EXPR.fullmatch(text):
    raise ValueError(f"not an expression of digits: {text!r}.")
  total, sign = 0, 1
  for term in re.split(r"([-+])", text):
    if term in "+-":
      sign = 1 if term == "+" else -1
      continue
    prod = 1
    for d in term.split("*"):
      prod *= int(d)
    total += sign * prod
  return total


def all_problems(n_digits: int, max_digit: int) -> list[Problem]:
  """Every (sorted digit multiset, reachable target) problem."""
  out = []
  for digits in itertools.combinations_with_replacement(range(1, max_digit + 1), n_digits):
    for t in sorted({v for _, v in expressions(digits)}):
      out.append(Problem(digits, t))
  return out


@dataclasses.dataclass
class Split:
  """Disjoint problem sets: the LMs' training text and the probe's prompts."""

  lm_train: list[Problem]
  probe_train: list[Problem]
  probe_test: list[Problem]


def make_split(*, n_digits: int, max_digit: int, n_probe_train: int, n_probe_test: int, seed: int) -> Split:
  """The probe's train/test prompts and the LMs' problems, all disjoint.

  Problems are drawn with probability proportional to their number of
  expressions (a target that many expressions reach is drawn more often, as a
  random expression's value would be); the LMs' text holds every other problem.
  """
  rng = np.random.default_rng(seed)
  problems = all_problems(n_digits, max_digit)
  n = n_probe_train + n_probe_test
  if n >= len(problems):
    raise ValueError(f"asked for {n} probe prompts, only {len(problems)} problems; widen the ranges.")
  counts = np.array([n_correct(p) for p in problems], np.float64)
  picked = rng.choice(len(problems), n, replace=False, p=counts / counts.sum())
  rest = np.setdiff1d(np.arange(len(problems)), picked)
  rest = rest[rng.permutation(len(rest))]
  return Split(
    lm_train=[problems[i] for i in rest],
    probe_train=[problems[i] for i in picked[:n_probe_train]],
    probe_test=[problems[i] for i in picked[n_probe_train:]],
  )


def correct_expressions(problem: Problem) -> list[str]:
  return [e for e, v in expressions(problem.digits) if v == problem.target]


def n_correct(problem: Problem) -> int:
  """How many distinct expressions solve ``problem``."""
  return len(correct_expressions(problem))


def line(problem: Problem, expr: str, correct: bool, verdicts: bool) -> str:
  """One line of the LMs' text: ``"17:1356=3*6-1*5;Y\\n"`` (no mark without verdicts)."""
  text = f"{problem.prompt}{expr}{EOS_CHAR}"
  if verdicts:
    text += GOOD if correct else BAD
  return text + NEWLINE


class WorksheetText:
  """The LMs' training text: graded worksheet lines, drawn fresh every step.

  Each line is a problem, then a correct expression (uniform among the
  problem's) or, with probability ``wrong_fraction``, a wrong one (uniform among
  the same digits' expressions of another value), then (with ``verdicts``) the
  grader's mark ``Y``/``N``. The loss mask covers everything after the ``=``
  (the problem itself is random: its loss is irreducible).

  Args:
    problems: the problems the LM may see.
    width: row width (tokens; ``seq_len + 1`` for next-token training).
    wrong_fraction: share of wrong expressions.
    verdicts: whether lines carry the grader's mark.
  """

  def __init__(self, problems: Sequence[Problem], width: int, *, wrong_fraction: float, verdicts: bool):
    if not 0 <= wrong_fraction <= 1:
      raise ValueError(f"wrong_fraction must be in [0, 1], got {wrong_fraction}.")
    if not problems:
      raise ValueError("no problems to train on.")
    self.problems = list(problems)
    self.width = width
    self.wrong_fraction = wrong_fraction
    self.verdicts = verdicts
    self._good = [correct_expressions(p) for p in self.problems]
    self._bad = [[e for e, v in expressions(p.digits) if v != p.target] for p in self.problems]

  def batch(self, *, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """``{"tokens", "mask"}`` ``[batch_size, width]``: a pure function of (seed, step)."""
    rng = np.random.default_rng((seed, step))
    tokens = np.zeros((batch_size, self.width), np.int32)
    mask = np.zeros((batch_size, self.width), bool)
    for row, i in enumerate(rng.integers(0, len(self.problems), batch_size)):
      wrong = rng.random() < self.wrong_fraction and self._bad[i]
      pool = self._bad[i] if wrong else self._good[i]
      p = self.problems[i]
      ids = encode(line(p, pool[rng.integers(len(pool))], not wrong, self.verdicts))
      if len(ids) > self.width:
        raise ValueError(f"a line of {len(ids)} tokens does not fit the width {self.width}.")
      tokens[row, : len(ids)] = ids
      mask[row, len(p.prompt) : len(ids)] = True
    return {"tokens": tokens, "mask": mask}


def prompt_tokens(problems: Sequence[Problem], width: int | None = None) -> Tokens:
  """The prompts as right-padded :class:`Tokens`."""
  return pad_sequences([encode(p.prompt) for p in problems], pad_id=PAD, width=width)


def completion_text(ids: Sequence[int], length: int) -> str:
  """A completion's text up to (not including) its end token."""
  text = decode(ids[:length])
  return text.split(EOS_CHAR, 1)[0]


def reward(text: str, problem: Problem) -> float:
  """1.0 if ``text`` uses exactly ``problem.digits`` and evaluates to the target, else 0.0."""
  try:
    value = evaluate(text)
  except ValueError:
    return 0.0
  used = tuple(sorted(int(c) for c in text if c.isdigit()))
  return float(used == problem.digits and value == problem.target)


def completion_texts(completions: Tokens) -> list[list[str]]:
  """``[P][k]`` texts of sampled completions (``Tokens([P, k, T], [P, k])``)."""
  p, k, _ = completions.tokens.shape
  return [
    [completion_text(completions.tokens[i, j], completions.lengths[i, j]) for j in range(k)] for i in range(p)
  ]


def rewards(problems: Sequence[Problem], completions: Tokens) -> np.ndarray:
  """``[P, k]`` rewards of sampled completions (``Tokens([P, k, T], [P, k])``)."""
  texts = completion_texts(completions)
  if len(texts) != len(problems):
    raise ValueError(f"{len(problems)} problems but completions for {len(texts)} prompts.")
  return np.array([[reward(t, prob) for t in row] for prob, row in zip(problems, texts)], np.float32)
