"""Q-probes on arithmetic: base LM, sampling, embeddings, probes, table and plots.

Pipeline of one run:

1. Problems ``a+b=`` / ``a*b+c=`` split into the probe's training prompts, its
   held-out test prompts and the LMs' training text (disjoint; :mod:`.task`).
2. Two small LMs trained from scratch on the same worksheet text: the base
   policy and a second, separately trained "API" embedder (other seed and
   width).
3. ``n_samples`` completions per prompt from the base policy
   (:class:`jaxweights.TransformerPolicy`), scored by executing
   ``int(completion) == answer``; greedy completions of the test prompts.
4. Embeddings: the base model's hidden state at the last completion token
   (main rows), and the API model's, saved with
   :class:`jaxweights.PrecomputedEmbeddings` and loaded back (API rows:
   the probe never touches the base model there).
5. Probes (:func:`jaxweights.families.q_probe.probe.train_probe`) per objective and seed: L_Q
   (MSE), L_CE (BCE), L_PG (groups of one prompt's samples), L_BT
   (Bradley-Terry on (correct, wrong) pairs of one prompt) and the API rows.
6. Evaluation on the test prompts: the exact expected reward ``sum_i p_i r_i``
   with ``p = softmax(Q / beta)`` over random ``k``-subsets of each prompt's
   samples (the same subsets for every method), averaged over prompts and
   subsets; the same vs ``k``, and vs the number of training prompts.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxweights
from experiments import common
from experiments.qprobe_arith import lm, task
from jaxweights import q_probe
from jaxweights.families.q_probe.transformer_policy import TransformerPolicy

EXPERIMENT = "qprobe_arith"

OBJECTIVE = {"L_Q": "mse", "L_CE": "ce", "L_PG": "pg", "L_BT": "bt"}


def method_spec(method: str) -> tuple[str, str]:
  """``(embedding source, objective)`` of a method name (``"api_L_PG"`` -> api, pg)."""
  source, name = ("api", method[4:]) if method.startswith("api_") else ("base", method)
  if name not in OBJECTIVE:
    raise ValueError(f"unknown method {method!r}; known: {sorted(OBJECTIVE)} and api_<those>.")
  return source, OBJECTIVE[name]


def pass_at_k(rewards: np.ndarray, k: int) -> float:
  """The unbiased pass@k estimate ``1 - C(n - c, k) / C(n, k)`` averaged over prompts."""
  n = rewards.shape[1]
  c = (rewards > 0).sum(axis=1)
  return float(np.mean([1.0 - math.comb(n - int(ci), k) / math.comb(n, k) for ci in c]))


def subsets(n_prompts: int, n: int, k: int, draws: int, seed: int) -> np.ndarray:
  """``[draws, prompts, k]`` random k-subsets of each prompt's ``n`` samples."""
  rng = np.random.default_rng((seed, k))
  return np.stack(
    [np.stack([rng.choice(n, k, replace=False) for _ in range(n_prompts)]) for _ in range(draws)]
  )


def subset_expected_reward(q: np.ndarray, r: np.ndarray, idx: np.ndarray, beta: float) -> float:
  """Mean over draws and prompts of ``sum_i softmax(q / beta)_i r_i`` on the subsets."""
  if idx.shape[2] == 1:
    return float(r[np.arange(r.shape[0])[None, :, None], idx].mean())
  rows = np.arange(q.shape[0])[:, None]
  vals = [q_probe.expected_reward(jnp.asarray(q[rows, d]), jnp.asarray(r[rows, d]), beta) for d in idx]
  return float(np.mean(jax.device_get(vals)))


def pair_auc(q: np.ndarray, r: np.ndarray) -> float:
  """Within-prompt ranking: P(Q(correct) > Q(wrong)) (ties 1/2), over prompts with both."""
  aucs = []
  for qi, ri in zip(q, r):
    good, bad = qi[ri > 0], qi[ri <= 0]
    if len(good) and len(bad):
      diff = good[:, None] - bad[None, :]
      aucs.append(float(np.mean((diff > 0) + 0.5 * (diff == 0))))
  return float(np.mean(aucs)) if aucs else float("nan")


def preference_pairs(rewards: np.ndarray, per_prompt: int, seed: int) -> np.ndarray:
  """``[P, 2]`` (chosen, rejected) flat indices: pairs of one prompt ranked by reward.

  Up to ``per_prompt`` pairs per prompt, drawn with replacement among its
  (higher reward, lower reward) combinations; prompts whose samples all have
  the same reward give none.
  """
  rng = np.random.default_rng(seed)
  p, n = rewards.shape
  pairs = []
  for i in range(p):
    hi, lo = np.nonzero(rewards[i][:, None] > rewards[i][None, :])
    if len(hi):
      pick = rng.integers(0, len(hi), per_prompt)
      pairs.append(np.stack([i * n + hi[pick], i * n + lo[pick]], axis=1))
  return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


class Data:
  """Samples, rewards and features of the probe's training and test prompts."""

  def __init__(self, rewards: dict, features: dict, completions: dict):
    self.rewards = rewards  # {"train"|"test": [P, n]}
    self.features = features  # {("base"|"api", "train"|"test"): [P, n, d]}
    self.completions = completions  # {"train"|"test": Tokens}


def build_data(config, split, base, api_model, exp_dir, log) -> tuple[Data, dict]:
  """Samples from the base policy, scores, embeds (base and API), saves the API features."""
  policy = TransformerPolicy(
    base,
    layer=config.layer,
    max_new_tokens=config.max_new_tokens,
    temperature=config.temperature,
    top_p=config.top_p,
    eos_id=task.EOS_ID,
    batch_size=config.policy_batch_size,
  )
  api_policy = TransformerPolicy(
    api_model,
    layer=config.layer,
    max_new_tokens=config.max_new_tokens,
    eos_id=task.EOS_ID,
    batch_size=config.policy_batch_size,
  )
  rewards, features, completions, facts = {}, {}, {}, {}
  key = jax.random.key(config.sample_seed)
  for i, (part, problems) in enumerate((("train", split.probe_train), ("test", split.probe_test))):
    prompts = task.prompt_tokens(problems)
    t0 = time.perf_counter()
    comps = policy.sample(jax.random.fold_in(key, i), prompts, config.n_samples)
    t_sample = time.perf_counter() - t0
    rewards[part] = task.rewards(problems, comps)
    completions[part] = comps
    t0 = time.perf_counter()
    features[("base", part)] = policy.embed(prompts, comps)
    t_embed = time.perf_counter() - t0
    # The API mode: another model embeds; the features go through the disk.
    path = exp_dir / f"api_embeddings_{part}.npz"
    q_probe.PrecomputedEmbeddings.save(path, api_policy.embed(prompts, comps), rewards[part])
    facts[f"sample_{part}_s"] = t_sample
    facts[f"embed_{part}_s"] = t_embed
    log(
      f"  sampled {len(problems)} x {config.n_samples} {part} completions in "
      f"{t_sample:.1f}s, embedded in {t_embed:.1f}s; mean reward "
      f"{rewards[part].mean():.3f}"
    )
  for part in ("train", "test"):
    loaded = q_probe.PrecomputedEmbeddings.load(exp_dir / f"api_embeddings_{part}.npz")
    if not np.array_equal(loaded.rewards, rewards[part]):
      raise RuntimeError("the saved API embeddings' rewards do not match the samples.")
    features[("api", part)] = loaded.features
  greedy_policy = TransformerPolicy(
    base,
    max_new_tokens=config.max_new_tokens,
    temperature=0.0,
    eos_id=task.EOS_ID,
    batch_size=config.policy_batch_size,
  )
  greedy = greedy_policy.sample(key, task.prompt_tokens(split.probe_test), 1)
  facts["greedy"] = float(task.rewards(split.probe_test, greedy).mean())
  return Data(rewards, features, completions), facts


def flat(features: np.ndarray, rewards: np.ndarray):
  p, n, d = features.shape
  return features.reshape(p * n, d), rewards.reshape(p * n), np.repeat(np.arange(p), n)


def train(config, source: str, objective: str, data: Data, seed: int, prompts=None):
  """Trains one probe on (a subset of) the training prompts -> ProbeResult."""
  feats, rew = data.features[(source, "train")], data.rewards["train"]
  if prompts is not None:
    feats, rew = feats[prompts], rew[prompts]
  x, r, ids = flat(feats, rew)
  pairs = None
  if objective in ("bt", "hinge"):
    pairs = preference_pairs(rew, config.bt_pairs_per_prompt, seed)
    if not len(pairs):
      raise ValueError(
        "no training prompt has samples of different rewards: no preference "
        "pairs (the base model never or always solves them)."
      )
  return q_probe.train_probe(
    x, r, ids, objective=objective, pairs=pairs, epochs=config.num_steps, seed=seed, **config.probe
  )


def q_values(probe, features: np.ndarray) -> np.ndarray:
  return np.asarray(probe(jnp.asarray(features)))


def run_method(method: str, seed: int, config, data: Data, evals: dict, exp_dir) -> dict:
  """Trains, logs and evaluates one (method, seed)."""
  source, objective = method_spec(method)
  test_f = data.features[(source, "test")]
  test_r, train_r = data.rewards["test"], data.rewards["train"]
  logger = common.run_logger(exp_dir, method, seed)
  init = q_probe.Probe(test_f.shape[-1], rngs=nnx.Rngs(seed))  # train_probe's initial probe
  init_reward = subset_expected_reward(q_values(init, test_f), test_r, evals["test", config.k], config.beta)
  logger.log({"step": 0, "test_expected_reward": init_reward})
  result = train(config, source, objective, data, seed)
  for epoch, loss in enumerate(result.history):
    logger.log({"step": epoch + 1, "loss_mean": loss})
  q_test = q_values(result.probe, test_f)
  q_train = q_values(result.probe, data.features[(source, "train")])
  metrics = {
    "expected_reward": subset_expected_reward(q_test, test_r, evals["test", config.k], config.beta),
    "argmax_reward": subset_expected_reward(q_test, test_r, evals["test", config.k], 0),
    "expected_reward_beta1": subset_expected_reward(q_test, test_r, evals["test", config.k], 1.0),
    "train_expected_reward": subset_expected_reward(q_train, train_r, evals["train", config.k], config.beta),
    "pair_auc": pair_auc(q_test, test_r),
    "init_expected_reward": init_reward,
  }
  logger.log(
    {
      "step": config.num_steps,
      "test_expected_reward": metrics["expected_reward"],
      "test_argmax_reward": metrics["argmax_reward"],
    }
  )
  for k in config.ks:
    metrics[f"expected_reward_k{k}"] = subset_expected_reward(q_test, test_r, evals["test", k], config.beta)
  if method in config.data_limited["methods"]:
    n_all = len(train_r)
    for n in config.data_limited["n_prompts"]:
      if n >= n_all:
        metrics[f"expected_reward_n{n}"] = metrics["expected_reward"]
        continue
      prompts = np.sort(np.random.default_rng((seed, n)).choice(n_all, n, replace=False))
      probe = train(config, source, objective, data, seed, prompts).probe
      metrics[f"expected_reward_n{n}"] = subset_expected_reward(
        q_values(probe, test_f), test_r, evals["test", config.k], config.beta
      )
  return metrics


def run(config, out: str = common.RESULTS, *, log=print) -> dict[str, Any]:
  """Runs the whole experiment; writes summary.json, table.md, plots, logs."""
  t_start = time.perf_counter()
  exp_dir = common.experiment_dir(out, EXPERIMENT)
  for method in config.methods:
    method_spec(method)
  if not max(config.ks) <= config.n_samples or not config.k <= config.n_samples:
    raise ValueError(f"k = {config.k} and ks {config.ks} must be <= n_samples {config.n_samples}.")
  split = task.make_split(**config.task)
  text = task.WorksheetText(split.lm_train, config.max_len + 1, **config.lm_text)
  log(
    f"[{EXPERIMENT}] config={config.name} methods={list(config.methods)} "
    f"seeds={list(config.seeds)} lm_text={len(split.lm_train)} problems, probe prompts "
    f"{len(split.probe_train)} train / {len(split.probe_test)} test x {config.n_samples} "
    f"samples, backend={jax.default_backend()}"
  )
  t0 = time.perf_counter()
  base, base_loss = lm.train_lm(
    text,
    max_len=config.max_len,
    logger=common.run_logger(exp_dir, "base_lm", 0),
    log=log,
    name="base LM",
    **config.base_lm,
  )
  api_model, api_loss = lm.train_lm(
    text,
    max_len=config.max_len,
    logger=common.run_logger(exp_dir, "api_lm", 0),
    log=log,
    name="API embedder LM",
    **config.api_lm,
  )
  t_lms = time.perf_counter() - t0
  data, facts = build_data(config, split, base, api_model, exp_dir, log)
  test_r = data.rewards["test"]
  n = config.n_samples
  evals = {}
  for part, rew in data.rewards.items():
    for k in sorted({*config.ks, config.k}):
      evals[part, k] = subsets(len(rew), n, k, config.eval_draws, seed=1 if part == "test" else 2)
  base_metrics = {
    "base_pass1": float(test_r.mean()),
    "greedy": facts["greedy"],
    "pass_at_k": pass_at_k(test_r, config.k),
  }
  t0 = time.perf_counter()
  per_seed = common.seeds_loop(
    config.methods,
    config.seeds,
    lambda m, s: {**run_method(m, s, config, data, evals, exp_dir), **base_metrics},
    log=log,
  )
  t_probes = time.perf_counter() - t0
  metrics = common.aggregate(per_seed)

  facts.update(
    base_lm_params=jaxweights.count_params(base),
    api_lm_params=jaxweights.count_params(api_model),
    base_lm_final_loss=base_loss,
    api_lm_final_loss=api_loss,
    lm_text_problems=len(split.lm_train),
    train_base_pass1=float(data.rewards["train"].mean()),
    pass_at_k_curve={k: pass_at_k(test_r, k) for k in config.ks},
    prompts_all_wrong=float(np.mean(test_r.max(axis=1) == 0)),
    majority_vote=majority_vote(data.completions["test"], test_r),
    distinct_wrong=distinct_wrong(data.completions["test"], test_r),
    prompts_all_right=float(np.mean(test_r.min(axis=1) == 1)),
    n_train_pairs=int(len(preference_pairs(data.rewards["train"], config.bt_pairs_per_prompt, 0))),
    features_base=int(data.features[("base", "test")].shape[-1]),
    features_api=int(data.features[("api", "test")].shape[-1]),
    lms_s=t_lms,
    probes_s=t_probes,
    backend=jax.default_backend(),
    examples=examples(split.probe_test, data.completions["test"], test_r),
  )
  plot_vs_k(exp_dir, config, per_seed, facts)
  plot_data_limited(exp_dir, config, per_seed, base_metrics)
  facts["runtime_s"] = time.perf_counter() - t_start
  write_table(exp_dir, config, metrics, facts)
  summary_config = config.to_json()
  summary_config.update(facts)
  common.write_summary(exp_dir, EXPERIMENT, summary_config, metrics)
  log(f"[{EXPERIMENT}] wrote {exp_dir} in {facts['runtime_s']:.1f}s")
  return common.read_summary(exp_dir / "summary.json")


def _answers(completions, i: int) -> list[str]:
  return [
    task.completion_text(completions.tokens[i, j], completions.lengths[i, j])
    for j in range(completions.tokens.shape[1])
  ]


def majority_vote(completions, rewards) -> float:
  """Reward of each prompt's most frequent completion (ties: the first seen), averaged."""
  out = []
  for i in range(rewards.shape[0]):
    answers = _answers(completions, i)
    top = max(dict.fromkeys(answers), key=answers.count)
    out.append(rewards[i, answers.index(top)])
  return float(np.mean(out))


def distinct_wrong(completions, rewards) -> float:
  """Mean number of distinct wrong completions per prompt."""
  return float(
    np.mean(
      [
        len({a for a, r in zip(_answers(completions, i), rewards[i]) if r == 0})
        for i in range(rewards.shape[0])
      ]
    )
  )


def examples(problems, completions, rewards, n: int = 3) -> list[str]:
  """A few test prompts with some of their sampled completions and rewards."""
  out = []
  for i in range(min(n, len(problems))):
    texts = [
      task.completion_text(completions.tokens[i, j], completions.lengths[i, j])
      for j in range(min(6, completions.tokens.shape[1]))
    ]
    shown = ", ".join(f"{t!r}:{int(r)}" for t, r in zip(texts, rewards[i]))
    out.append(f"{problems[i].prompt} (answer {problems[i].answer}) -> {shown}")
  return out


# --- plots and table ------------------------------------------------------------------------


def plot_vs_k(exp_dir, config, per_seed, facts):
  ks = np.asarray(config.ks, np.float64)
  curves = {
    m: [(ks, np.asarray([run[f"expected_reward_k{k}"] for k in config.ks])) for run in runs]
    for m, runs in per_seed.items()
  }
  curves["pass@k"] = [(ks, np.asarray([facts["pass_at_k_curve"][k] for k in config.ks]))]
  base = per_seed[config.methods[0]][0]["base_pass1"]
  common.plot_curves(
    exp_dir / "expected_reward_vs_k.png",
    curves,
    xlabel="k (candidates per prompt)",
    ylabel=f"test expected reward (beta = {config.beta})",
    title=f"Q-probe selection vs k ({config.name}, {len(config.seeds)} probe seeds)",
    hline=(base, "base pass@1"),
  )


def plot_data_limited(exp_dir, config, per_seed, base_metrics):
  ns = np.asarray(config.data_limited["n_prompts"], np.float64)
  curves = {
    m: [
      (ns, np.asarray([run[f"expected_reward_n{n}"] for n in config.data_limited["n_prompts"]]))
      for run in per_seed[m]
    ]
    for m in config.data_limited["methods"]
    if m in per_seed
  }
  common.plot_curves(
    exp_dir / "data_limited.png",
    curves,
    xlabel="training prompts",
    ylabel=f"test expected reward (k = {config.k}, beta = {config.beta})",
    title=f"Q-probe with fewer training prompts ({config.name})",
    hline=(base_metrics["base_pass1"], "base pass@1"),
  )


def _cell(vals: dict, key: str) -> str:
  return common.fmt(vals[key], vals.get(f"{key}_std"), 3)


def write_table(exp_dir, config, metrics, facts):
  first = metrics[config.methods[0]]
  k, beta = config.k, config.beta
  header = (
    f"| row | test E[r] (k = {k}, beta = {beta}) | argmax (beta = 0) | beta = 1 | "
    "train E[r] | within-prompt AUC |"
  )
  lines = [
    header,
    "|---|---|---|---|---|---|",
    f"| base pass@1 | {first['base_pass1']:.3f} | — | — | {facts['train_base_pass1']:.3f} | — |",
    f"| greedy | {first['greedy']:.3f} | — | — | — | — |",
    f"| majority vote of {config.n_samples} | {facts['majority_vote']:.3f} | — | — | — | — |",
  ]
  for method, vals in metrics.items():
    lines.append(
      f"| {method} | {_cell(vals, 'expected_reward')} | "
      f"{_cell(vals, 'argmax_reward')} | {_cell(vals, 'expected_reward_beta1')} | "
      f"{_cell(vals, 'train_expected_reward')} | {_cell(vals, 'pair_auc')} |"
    )
  lines.append(f"| pass@{k} | {first['pass_at_k']:.3f} | — | — | — | — |")

  ks = config.ks
  vs_k = [
    f"Test expected reward vs k (beta = {beta}; k = 1 is the base pass@1 estimated "
    f"from the same {config.eval_draws} random draws per prompt):",
    "",
    "| method | " + " | ".join(f"k={x}" for x in ks) + " |",
    "|---|" + "---|" * len(ks),
  ]
  for method, vals in metrics.items():
    vs_k.append(f"| {method} | " + " | ".join(_cell(vals, f"expected_reward_k{x}") for x in ks) + " |")
  vs_k.append("| pass@k | " + " | ".join(f"{facts['pass_at_k_curve'][x]:.3f}" for x in ks) + " |")
  ns = config.data_limited["n_prompts"]
  limited = [
    f"Data-limited: test expected reward (k = {k}, beta = {beta}) vs the number of "
    "training prompts (a random subset per seed; same epochs):",
    "",
    "| method | " + " | ".join(f"{x} prompts" for x in ns) + " |",
    "|---|" + "---|" * len(ns),
  ]
  for method in config.data_limited["methods"]:
    if method in metrics:
      limited.append(
        f"| {method} | " + " | ".join(_cell(metrics[method], f"expected_reward_n{x}") for x in ns) + " |"
      )

  blm, alm = config.base_lm, config.api_lm
  intro = (
    f"Task: `a+b=` (a, b <= {config.task['add_max']}) and `a*b+c=` (a, b <= "
    f"{config.task['mul_max']}), {len(config.seeds)} probe seeds. Reward: "
    "`int(completion) == answer` (executed). Base LM: TransformerLM "
    f"{blm['model']} ({facts['base_lm_params']} params), trained here for "
    f"{blm['steps']} steps on {facts['lm_text_problems']} other problems' worksheet "
    f"lines (answer wrong with probability {config.lm_text['wrong_fraction']}, a uniform "
    "guess, then the grader's mark Y/N). Probe data: "
    f"{config.task['n_probe_train']} training x {config.task['n_probe_test']} test prompts "
    f"(never in the LMs' text) x {config.n_samples} samples (temperature "
    f"{config.temperature}, top-p {config.top_p}); features: the base LM's last-block "
    f"hidden state at the last completion token (the end token `;`, d = "
    f"{facts['features_base']}). `api_*` rows: features from a second LM "
    f"({alm['model']}, {facts['api_lm_params']} params, seed {alm['seed']}) trained on "
    f"the same text, saved with PrecomputedEmbeddings and loaded back (d = "
    f"{facts['features_api']}). L_BT: Bradley-Terry on (correct, wrong) pairs of one "
    f"prompt ({config.bt_pairs_per_prompt} per prompt with both, "
    f"{facts['n_train_pairs']} pairs). Probes: linear, AdamW lr "
    f"{config.probe['learning_rate']}, {config.num_steps} epochs, batch "
    f"{config.probe['batch_size']} (L_PG: groups of {config.probe['group_size']}, trained "
    f"at beta = 1). E[r] = exact expected reward sum_i softmax(Q/beta)_i r_i over random "
    f"{k}-subsets of each prompt's {config.n_samples} samples ({config.eval_draws} draws, the "
    "same for every method), mean ± std over probe seeds. Within-prompt AUC: P(Q(correct) "
    f"> Q(wrong)) among one prompt's samples. Config `{config.name}`, {facts['backend']}, "
    f"runtime {facts['runtime_s']:.0f}s (LMs {facts['lms_s']:.0f}s, probes "
    f"{facts['probes_s']:.0f}s)."
  )
  notes = (
    [ordering_verdict(metrics, config, facts)]
    + list(FINDINGS)
    + [
      f"Per test prompt: {config.n_samples} samples hold on average "
      f"{config.n_samples * first['base_pass1']:.1f} copies of the correct answer (identical "
      f"text, so identical Q) and {facts['distinct_wrong']:.1f} distinct wrong answers. "
      "Majority vote (a baseline that sees the duplicates, which a per-candidate probe "
      "does not) and greedy decoding are shown for reference.",
      "An untrained probe (each seed's random initialisation, the step-0 record of the "
      f"logs) gives E[r] {init_note(metrics)} at k = {k}, beta = {beta} (base pass@1 "
      f"{first['base_pass1']:.3f}): a random direction can pick worse than a uniform draw, "
      "so a probe that has barely moved (e.g. L_Q on few prompts: 150 epochs of one "
      "step) can end below base pass@1.",
      f"Test prompts never solved in {config.n_samples} samples: "
      f"{100 * facts['prompts_all_wrong']:.0f}%; always solved: "
      f"{100 * facts['prompts_all_right']:.0f}%.",
      "Examples (test prompt -> first sampled completions:reward): "
      + "; ".join(f"`{e}`" for e in facts["examples"]),
    ]
  )
  common.write_table(
    exp_dir,
    "Q-probe: arithmetic with an executable reward",
    intro=intro,
    blocks=lines + [""] + vs_k + [""] + limited + [""],
    notes=notes,
  )


def init_note(metrics) -> str:
  """The untrained probes' E[r] per feature source (base / api), mean over seeds."""
  parts = []
  for source in ("base", "api"):
    vals = [v["init_expected_reward"] for m, v in metrics.items() if method_spec(m)[0] == source]
    if vals:
      parts.append(f"{np.mean(vals):.3f} ({source} features)")
  return " and ".join(parts)


def ordering_verdict(metrics, config, facts) -> str:
  """Whether base pass@1 < L_Q <= L_CE < L_PG <= pass@k holds (means, with the stds)."""
  need = ("L_Q", "L_CE", "L_PG")
  if not all(m in metrics for m in need):
    return "Ordering not checked: L_Q, L_CE and L_PG are not all in this run."
  first = metrics[config.methods[0]]
  base, pk = first["base_pass1"], first["pass_at_k"]
  e = {m: metrics[m]["expected_reward"] for m in need}
  s = {m: metrics[m]["expected_reward_std"] for m in need}
  checks = [
    (f"base pass@1 {base:.3f} < L_Q {e['L_Q']:.3f}", base < e["L_Q"]),
    (f"L_Q <= L_CE {e['L_CE']:.3f}", e["L_Q"] <= e["L_CE"]),
    (f"L_CE < L_PG {e['L_PG']:.3f}", e["L_CE"] < e["L_PG"]),
    (f"L_PG <= pass@{config.k} {pk:.3f}", e["L_PG"] <= pk),
  ]
  held = all(ok for _, ok in checks)
  parts = "; ".join(f"{text}: {'yes' if ok else 'NO'}" for text, ok in checks)
  return (
    f"Paper's ordering base pass@1 < L_Q <= L_CE < L_PG <= pass@k "
    f"{'holds' if held else 'does not fully hold'} on the means ({parts}; probe-seed "
    f"stds L_Q {s['L_Q']:.3f}, L_CE {s['L_CE']:.3f}, L_PG {s['L_PG']:.3f}: the seeds vary "
    "only the probe's initialisation and batch order, the samples are fixed)."
  )


# What the investigation found (quick config scale, CPU); kept with the code so
# the table states it. Re-check when the task, the LMs or the defaults change.
FINDINGS: list[str] = [
  "Investigation 1 (why worksheet text with verdict marks). With plain `a+b=c;` "
  "text the base LM's hidden states carry no within-prompt correctness signal: on a "
  "1000-step LM (pass@1 0.347, greedy 0.48) ridge-regression probes on blocks 0-2 at "
  "the end token gave test E[r] 0.29-0.34 at k = 48, beta = 0.1 (below base), and so "
  "did a 3000-step LM (greedy 0.79) sampled at temperature 1.5 / 2.0 (pass@1 0.64 / "
  "0.51; probes 0.53-0.59 / 0.40-0.47), also at the last answer digit instead of the "
  "end token. The probes fit across-prompt difficulty (correlation with the reward "
  "0.55) but cannot rank one prompt's candidates: nothing in that text makes the end "
  "token's state depend on correctness (its next token is padding, never trained).",
  "Investigation 2. Verdict marks teach the LM to judge answers only when the wrong "
  "answers are learnable: with near-miss wrong answers (last digit +-1, carry +-10) "
  "the LM's own Y-vs-N logit stayed at chance for 3000 steps (2 and 4 blocks); with "
  "uniform guesses (this config) it is learned, and the probes recover it: on the "
  "2000-step LM the LM's own logit(Y) - logit(N) used as Q gave 0.330 at beta = 0.1, "
  "0.394 at beta = 1 (within-prompt AUC 0.774), the L_CE probe 0.333 / 0.388 (AUC "
  "0.786). The probe is as good as the model's own judgement, no better; the LM was "
  "then trained 3000 instead of 2000 steps (a better judge; pass@1 still in range).",
  "Investigation 3 (why E[r] falls with k). Selection peaks at k = 2-8 and declines "
  "towards k = 48, and argmax (beta = 0) is below base pass@1: a winner's curse. The "
  "correct answer's copies share one Q value while each distinct wrong answer is one "
  "more draw of an imperfect judge's score, so the highest Q among ~20 distinct wrong "
  "answers beats the correct answer's more often as k grows; beta = 0.1 is close to "
  "argmax at these Q scales (std of Q over candidates 0.3-7), and beta = 1 keeps "
  "more of the gain (column beta = 1). L_PG, trained on groups of 10 at beta = 1, "
  "suffers most at k = 48 / beta = 0.1 though it is on par with L_CE at beta = 1. "
  "The data-limited rows agree: L_CE and L_PG trained on 10 prompts (fewer steps, "
  "smaller Q scale, softer selection) are no worse at k = 48 than on 100.",
  "Investigation 4 (probe learning rate, seed 0, 2000-step LM, test E[r] at beta = "
  "0.1 / 1): lr 5e-5 (the paper's) / 1e-3 / 1e-2: L_Q 0.144/0.272, 0.269/0.293, "
  "0.347/0.296; L_CE 0.281/0.363, 0.333/0.388, 0.329/0.383; L_PG 0.267/0.377, "
  "0.286/0.390, 0.201/0.335. 5e-5 under-fits here (150 epochs are ~750 steps with "
  "100 prompts x 50 samples, against ~14k in the paper); 1e-3 was set before these "
  "runs and kept.",
]
