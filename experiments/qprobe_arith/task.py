"""The arithmetic task: prompts, a character tokenizer and an executable reward.

Two kinds of prompt with small integers, ``"a+b="`` (``a, b`` in
``[0, add_max]``) and ``"a*b+c="`` (``a, b`` in ``[0, mul_max]``, ``c`` in
``[0, add_max]``). A completion is the answer's digits then the end token
``";"``. The reward executes the check: ``int(completion up to the end
token) == the true answer`` (1.0), anything else (no parse, wrong value) 0.0.

The LMs learn the task from "worksheet" text (:class:`WorksheetText`): lines
``"12+34=46;Y\\n"``, where a share of the answers are wrong and the grader's
mark ``Y``/``N`` follows the end token. A policy's completion stops at the end
token, so the mark is never sampled; it only shapes what the LM's hidden state
at the end token knows.

The tokenizer maps each character to one id (0 is padding), so a
:class:`~jaxweights.TransformerLM` with a 20-token vocabulary can learn the
task from scratch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxweights.families.q_probe.policies import Tokens, pad_sequences

PAD = 0
CHARS = "0123456789+*=;YN\n"
EOS_CHAR = ";"  # ends an answer (the completion's last token)
GOOD, BAD = "Y", "N"  # the verdict marks of graded lines
NEWLINE = "\n"
VOCAB_SIZE = 20  # padding + 17 characters, rounded up


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
  prompt: str
  answer: int


def all_problems(add_max: int, mul_max: int) -> tuple[list[Problem], list[Problem]]:
  """Every ``a+b=`` and every ``a*b+c=`` problem of the given ranges."""
  add = [Problem(f"{a}+{b}=", a + b) for a in range(add_max + 1) for b in range(add_max + 1)]
  mul = [
    Problem(f"{a}*{b}+{c}=", a * b + c)
    for a in range(mul_max + 1)
    for b in range(mul_max + 1)
    for c in range(add_max + 1)
  ]
  return add, mul


@dataclasses.dataclass
class Split:
  """Disjoint problem sets: the base LMs' training text and the probe's prompts."""

  lm_train: list[Problem]
  probe_train: list[Problem]
  probe_test: list[Problem]


def make_split(
  *,
  add_max: int,
  mul_max: int,
  mul_fraction: float,
  n_probe_train: int,
  n_probe_test: int,
  lm_train_size: int | None,
  seed: int,
) -> Split:
  """Samples the probe's train/test prompts, then the LM text from the rest.

  Probe prompts are drawn with ``mul_fraction`` of ``a*b+c`` problems; the LM
  training text is ``lm_train_size`` of the remaining problems in the same mix
  (``None``: every remaining problem), so no probe prompt, train or test, is
  ever in the LMs' training text.
  """
  if not 0 <= mul_fraction <= 1:
    raise ValueError(f"mul_fraction must be in [0, 1], got {mul_fraction}.")
  rng = np.random.default_rng(seed)
  add, mul = all_problems(add_max, mul_max)
  add = [add[i] for i in rng.permutation(len(add))]
  mul = [mul[i] for i in rng.permutation(len(mul))]

  def take(pool, n):
    if n > len(pool):
      raise ValueError(f"asked for {n} problems, only {len(pool)} left; widen the ranges.")
    return pool[:n], pool[n:]

  def mix(n):
    nonlocal add, mul
    n_mul = int(round(n * mul_fraction))
    got_mul, mul = take(mul, n_mul)
    got_add, add = take(add, n - n_mul)
    out = got_add + got_mul
    return [out[i] for i in rng.permutation(len(out))]

  probe_train = mix(n_probe_train)
  probe_test = mix(n_probe_test)
  if lm_train_size is None:  # every remaining problem, whatever the mix
    rest = add + mul
    lm_train = [rest[i] for i in rng.permutation(len(rest))]
  else:
    lm_train = mix(lm_train_size)
  return Split(lm_train=lm_train, probe_train=probe_train, probe_test=probe_test)


# Typical slips of a graded worksheet's wrong answers: the last digit off by
# one, a carry dropped or added.
WRONG_OFFSETS = (1, -1, 10, -10)


def wrong_answers(answer: int, kind: str, rng: np.random.Generator, n: int = 4, high: int = 199) -> list[int]:
  """``n`` wrong answers to a problem, never equal to ``answer``.

  ``kind="slip"``: near misses, ``answer + o`` for the :data:`WRONG_OFFSETS`
  (``answer - o`` where that would be negative), cycled to ``n``.
  ``kind="guess"``: uniform guesses in ``[0, high)``.
  ``kind="mix"``: half slips, half guesses.
  """
  slips = [answer + o if answer + o >= 0 else answer - o for o in WRONG_OFFSETS]
  slips = [slips[i % len(slips)] for i in range(n)]
  guesses = []
  while len(guesses) < n:
    g = int(rng.integers(0, high))
    if g != answer:
      guesses.append(g)
  if kind == "slip":
    return slips
  if kind == "guess":
    return guesses
  if kind == "mix":
    return slips[: n // 2] + guesses[: n - n // 2]
  raise ValueError(f"unknown wrong-answer kind {kind!r}; use 'slip', 'guess' or 'mix'.")


def line(prompt: str, value: int, correct: bool, verdicts: bool) -> str:
  """One line of the LMs' text: ``"12+34=46;Y\\n"`` (``"12+34=46\\n"`` without verdicts)."""
  text = f"{prompt}{value}{EOS_CHAR}"
  if verdicts:
    text += GOOD if correct else BAD
  return text + NEWLINE


class WorksheetText:
  """The LMs' training text: graded worksheet lines, drawn fresh every step.

  Each line is a problem, an answer that is wrong with probability
  ``wrong_fraction`` (one of :func:`wrong_answers`, uniformly), then (with
  ``verdicts``) the grader's mark ``Y``/``N``. The loss mask covers
  everything after the ``=``: the answer, the end token, the mark and the
  newline (the operands are random: their loss is irreducible).

  Args:
    problems: the problems the LM may see.
    width: row width (tokens; ``max_len + 1`` for next-token training).
    wrong_fraction: share of wrong answers.
    verdicts: whether lines carry the grader's mark.
  """

  def __init__(
    self,
    problems: Sequence[Problem],
    width: int,
    *,
    wrong_fraction: float,
    verdicts: bool,
    wrong_kind: str = "guess",
    n_wrong: int = 4,
    seed: int = 0,
  ):
    if not 0 <= wrong_fraction <= 1:
      raise ValueError(f"wrong_fraction must be in [0, 1], got {wrong_fraction}.")
    if not problems:
      raise ValueError("no problems to train on.")
    self.wrong_fraction = wrong_fraction
    rng = np.random.default_rng(seed)
    self.tokens = np.zeros((len(problems), n_wrong + 1, width), np.int32)
    self.mask = np.zeros((len(problems), n_wrong + 1, width), bool)
    high = max(p.answer for p in problems) + 1
    for i, p in enumerate(problems):
      values = [p.answer] + wrong_answers(p.answer, wrong_kind, rng, n_wrong, high)
      for j, v in enumerate(values):
        ids = encode(line(p.prompt, v, j == 0, verdicts))
        if len(ids) > width:
          raise ValueError(f"a line of {len(ids)} tokens does not fit the width {width}.")
        self.tokens[i, j, : len(ids)] = ids
        self.mask[i, j, len(p.prompt) : len(ids)] = True

  def batch(self, *, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """``{"tokens", "mask"}`` ``[batch_size, width]``: a pure function of (seed, step)."""
    rng = np.random.default_rng((seed, step))
    idx = rng.integers(0, len(self.tokens), batch_size)
    wrong = rng.random(batch_size) < self.wrong_fraction
    variant = np.where(wrong, rng.integers(1, self.tokens.shape[1], batch_size), 0)
    return {"tokens": self.tokens[idx, variant], "mask": self.mask[idx, variant]}


def prompt_tokens(problems: Sequence[Problem], width: int | None = None) -> Tokens:
  """The prompts as right-padded :class:`Tokens`."""
  return pad_sequences([encode(p.prompt) for p in problems], pad_id=PAD, width=width)


def completion_text(ids: Sequence[int], length: int) -> str:
  """A completion's text up to (not including) its end token."""
  text = decode(ids[:length])
  return text.split(EOS_CHAR, 1)[0]


def reward(text: str, answer: int) -> float:
  """1.0 if ``int(text) == answer``, else 0.0 (including text that does not parse)."""
  try:
    return float(int(text) == answer)
  except ValueError:
    return 0.0


def rewards(problems: Sequence[Problem], completions: Tokens) -> np.ndarray:
  """``[P, k]`` rewards of sampled completions (``Tokens([P, k, T], [P, k])``)."""
  p, k, _ = completions.tokens.shape
  if p != len(problems):
    raise ValueError(f"{len(problems)} problems but completions for {p} prompts.")
  out = np.zeros((p, k), np.float32)
  for i, prob in enumerate(problems):
    for j in range(k):
      out[i, j] = reward(completion_text(completions.tokens[i, j], completions.lengths[i, j]), prob.answer)
  return out
