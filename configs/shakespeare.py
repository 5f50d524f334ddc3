"""Robust federated fine-tuning of a character language model on Shakespeare's speakers (issue
31): natural clients, corruption independent or by play, full fine-tuning against LoRA adapters.

The task (LEAF's Shakespeare, `data.shakespeare`): the clients are the n = 12 longest speaking
roles (play, speaker) of the plays outside `data.shakespeare.BASE_PLAYS`; an example is a window
of 40 characters and the next character (LEAF uses 80; 40 halves the CPU time); each role's text
is split contiguously into training (70%), test (10%, pooled: the global test set) and held-out
(20%, each client's own) parts, at most 256 training and 256 held-out windows per client. The
model: a one-layer character transformer (width 32, 2 heads; 18,533 parameters) pretrained
centrally on the seven base plays (`pretraining`, cached: `launch/pretrain.py`), then fine-tuned
federatedly:
- full:  every client trains all of the base's parameters (d = 18,533 sent, attacked,
         aggregated);
- lora:  LoRA adapters of rank 4 on the attention and MLP projections, base frozen (d = 2,304).
The corruption, E[b] = 2 = the declared f under both laws (each client Byzantine with marginal
probability 1/6):
- independent: Bernoulli(1/6) per client;
- plays:       the clusters law on the data's own groups (`cluster_assignment='data'`): each
               play compromised with π = 1/6, and then every one of its roles Byzantine (q1 = 1);
               roles of one play fail together.
The Byzantine clients run ALIE (z = 1) on their updates; the rules are the trimmed mean and the
geometric median, each with and without nearest-neighbour mixing (NNM); the default grid runs the
trimmed mean with and without NNM (8 points), `--config.grid.aggregators` adds the others.
Robust D-SGD with worker momentum 0.9, 20 rounds, one local step of 16 windows, S = 16 draws per
point (the same draws for every rule and fine-tuning of a law). The headline: each honest client's next-character accuracy on its own
held-out text, averaged over the honest set, E[· | b = f] and E[· | b ≤ f] with CIs
(results.csv, the printed tables); perplexity = exp(held-out loss).

  python launch/pretrain.py --config=configs/shakespeare.py
  python launch/sweep.py --config=configs/shakespeare.py --workdir=runs/shakespeare

The same configuration scales by flags, e.g. on a GPU LEAF's window and a larger model:
--config.base.data.shakespeare.window=80 --config.base.model_options.char_transformer.width=256
--config.base.model_options.char_transformer.layers=4 --config.base.num_clients=100
--config.base.num_samples=256 (sizes and times: BUILD.md).
"""

import ml_collections

from configs import default
from fedjax_robust.errors import ConfigError
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list
from fedjax_robust.sweep import axis
from fedjax_robust.sweep import product

EXPECTED_B = 2            # E[b] under both laws, = the declared f
FINETUNING = ("full", "lora")
LAWS = ("independent", "plays")
LORA_RANK = 4


def base_config() -> ml_collections.ConfigDict:
  """One run of the study: the text task, the model, the pretraining, the training."""
  c = default.get_config()
  c.num_clients = 12
  c.f = EXPECTED_B
  c.num_samples = 16
  c.data.name = "shakespeare"
  c.data.holdout_fraction = 0.2
  c.data.test_fraction = 0.1
  c.data.shakespeare.window = 40
  c.data.shakespeare.max_examples_per_client = 256
  c.data.shakespeare.max_test_examples = 1000
  c.model = "char_transformer"
  c.model_options.char_transformer.layers = 1
  c.model_options.char_transformer.width = 32
  c.model_options.char_transformer.heads = 2
  c.pretraining.enabled = True
  c.pretraining.steps = 3000
  c.pretraining.batch_size = 64
  c.pretraining.lr = 3e-3
  c.training.num_rounds = 20
  c.training.eval_every = 20
  c.training.local_steps = 1
  c.training.batch_size = 16
  c.training.client_lr = 0.3
  c.training.client_momentum = 0.9
  c.attack = "alie"
  c.attack_options.alie.z = 1.0
  c.honest_set = "bernoulli"
  c.honest_set_options.bernoulli.p = EXPECTED_B / c.num_clients
  # The smoothness estimate and the D-GD bounds are about full-batch D-GD (not this training),
  # and a Hessian power iteration on a transformer costs minutes per evaluation.
  c.theory.enabled = False
  c.estimators.honest_optimum = False
  return c


def get_config():
  c = ml_collections.ConfigDict()
  c.base = base_config()
  c.grid = ml_collections.ConfigDict({
      "aggregators": ("trimmed_mean", "nnm+trimmed_mean"),
      "law": LAWS, "finetuning": FINETUNING})
  c.plot = ml_collections.ConfigDict({"x": "law", "series": "aggregator", "style": "finetuning",
                                      "metric": "honest_holdout_accuracy"})
  return c


def law_overrides(name: str, n: int) -> dict:
  """μ_H of `name` with E[b] = EXPECTED_B: independent Bernoulli, or whole plays compromised."""
  if name == "independent":
    return {"honest_set": "bernoulli", "honest_set_options.bernoulli.p": EXPECTED_B / n}
  if name == "plays":
    return {"honest_set": "clusters", "cluster_assignment": "data",
            "honest_set_options.clusters.pi": EXPECTED_B / n,
            "honest_set_options.clusters.q1": 1.0, "honest_set_options.clusters.q0": 0.0}
  raise ConfigError(f"grid.law={name!r} is not a law of this study; allowed: {', '.join(LAWS)}.")


def finetuning_overrides(name: str) -> dict:
  """Full fine-tuning of the pretrained base, or LoRA adapters of rank LORA_RANK on it."""
  if name == "full":
    return {"model_options.char_transformer.lora_rank": 0}
  if name == "lora":
    return {"model_options.char_transformer.lora_rank": LORA_RANK}
  raise ConfigError(f"grid.finetuning={name!r} is not a fine-tuning of this study; allowed: "
                    f"{', '.join(FINETUNING)}.")


def points(c):
  """aggregator × law × fine-tuning; each grid axis a tuple or a comma-separated string."""
  n = c.base.num_clients
  modes = [Point({"finetuning": m}, finetuning_overrides(m))
           for m in as_list(c.grid.finetuning, str)]
  laws = [Point({"law": name}, law_overrides(name, n)) for name in as_list(c.grid.law, str)]
  return product(axis("aggregator", as_list(c.grid.aggregators, str)), laws, modes)


def plot_note(c) -> str:
  b = c.base
  return (f"Shakespeare, the {b.num_clients} longest roles; char transformer pretrained on the "
          f"base plays; full fine-tuning or LoRA rank {LORA_RANK}; E[b] = {EXPECTED_B} = f: "
          f"independent Bernoulli({EXPECTED_B}/{b.num_clients}) or whole plays (π = "
          f"{EXPECTED_B}/{b.num_clients}); ALIE z = {b.attack_options.alie.z:g}; "
          f"{b.training.num_rounds} rounds, S = {b.num_samples}.")
