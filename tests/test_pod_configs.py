"""The pod configurations of the LM experiments: sized as documented, and their
pipeline (Llama, sharded state, per-process rows) run end to end at toy size."""

from __future__ import annotations

import math

import pytest

import jaxweights as jw
from experiments import lm_recipe, load


@pytest.mark.parametrize("name", ["loss_lm", "presence_lm"])
def test_pod_config_is_the_1b_llama_on_a_v5e_64_layout(name):
  config = load(name).get_config("pod")
  assert config.model_kind == "llama" and math.prod(config.mesh.values()) == 64
  model_cfg = lm_recipe.model_config(config, vocab_size=config.corpus["vocab_size"])
  assert isinstance(model_cfg, jw.LlamaConfig) and model_cfg.remat and model_cfg.dtype == "bfloat16"
  n = lm_recipe.count_params(model_cfg)
  assert 1.0e9 < n < 1.1e9, n
  shards = config.mesh["data"] * config.mesh["fsdp"]
  assert config.batch_size % shards == 0 and config.batch_size // shards == 8
  assert config.seq_len == 2048


def test_gpu_node_config():
  config = load("loss_lm").get_config("pod_gpu8")
  assert math.prod(config.mesh.values()) == 8 and config.batch_size // 8 == 8


@pytest.mark.slow
@pytest.mark.parametrize("name", ["loss_lm", "presence_lm"])
def test_pod_pipeline_at_toy_size(name, tmp_path):
  module = load(name)
  config = module.get_config("pod_smoke")
  config.cache_dir = str(tmp_path / "cache")
  summary = module.train_and_evaluate(config, tmp_path / name, log=lambda *_: None)
  for method, values in summary["metrics"].items():
    assert math.isfinite(values["heldout_loss"]), method
