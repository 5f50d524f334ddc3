"""A shakespeare configuration that trains in seconds (issue 31): 4 speaking roles of 50 windows
of 16 characters, a one-block character transformer of width 8 on a base pretrained for 30 steps
on 2,000 windows, 2 draws of 2 rounds; the theory and the honest optimum off (the smoothness
measurement is slow on a transformer)."""

from fedjax_robust.config import base_config


def get_config(cache_dir: str | None = None, *, lora_rank: int = 0, pretrained: bool = True):
  c = base_config()
  c.data.name = "shakespeare"
  c.model = "char_transformer"
  c.num_clients = 4
  c.f = 1
  c.num_samples = 2
  c.aggregator = "mean"
  c.honest_set = "fixed_count"
  c.honest_set_options.fixed_count.num_byzantine = 1
  c.attack = "sign_flip"
  c.theory.enabled = False
  c.estimators.honest_optimum = False
  s = c.data.shakespeare
  s.window, s.max_examples_per_client, s.max_test_examples = 16, 50, 100
  c.model_options.char_transformer.update(layers=1, width=8, heads=2, mlp_ratio=4,
                                          lora_rank=lora_rank)
  p = c.pretraining
  p.enabled, p.steps, p.batch_size, p.lr, p.max_examples = pretrained, 30, 32, 3e-3, 2000
  p.cache_dir = cache_dir
  c.training.num_rounds = 2
  c.training.eval_every = 1
  c.training.batch_size = 16
  return c
