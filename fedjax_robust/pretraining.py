"""A base language model pretrained centrally on text no client holds, cached like a run (engine
layer, BUILD.md "Layers").

Federated fine-tuning (issue 31) starts every client from a base model trained by the server on
public text: for `shakespeare`, the plays of `data.shakespeare.BASE_PLAYS`, from which no client
is drawn. `base_params(job)` trains it once (Adam, `pretraining.steps` minibatches of
`pretraining.batch_size` windows drawn with replacement) and saves it to
`<pretraining.cache_dir>/<fingerprint>.npz` with what made it (`base_config`, its fingerprint and
the provenance); a later job with the same base configuration and a reusable provenance
(`provenance.reuse_mismatch`: same numbers version, JAX, backend) loads it instead, and one whose
configuration or code differs trains a new one, saying why. With `lora_rank` > 0 the clients
then train only low-rank adapters on the frozen base (`models.get(..., base_params=…)`); with
`lora_rank` 0 they fine-tune all of its parameters.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from fedjax_robust import config as config_lib
from fedjax_robust import models
from fedjax_robust import provenance
from fedjax_robust import run_cache

# The model options that shape the adapters, not the base: a base serves every rank.
ADAPTER_OPTIONS = ("lora_rank", "lora_alpha")
# Share of the base text's windows (its last ones, contiguous) kept out of pretraining to report
# the base model's held-out loss and accuracy.
EVAL_FRACTION = 0.02


def default_cache_dir() -> str:
  """`$FEDJAX_ROBUST_CACHE/pretrained`, or `~/.cache/fedjax_robust/pretrained`."""
  root = os.environ.get("FEDJAX_ROBUST_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "fedjax_robust")
  return os.path.join(root, "pretrained")


def base_config(job) -> ml_collections.ConfigDict:
  """What determines the base model's parameters: the model and its options less the adapters',
  the data set and its window, the pretraining settings (less the cache folder) and the seed."""
  c = config_lib.config_of(job)
  options = {k: v for k, v in c.model_options.get(c.model, {}).items()
             if k not in ADAPTER_OPTIONS}
  p = c.pretraining
  return ml_collections.ConfigDict({
      "model": c.model, "model_options": options, "data": c.data.name,
      "window": int(c.data.shakespeare.window), "seed": int(c.seed),
      "steps": int(p.steps), "batch_size": int(p.batch_size), "lr": float(p.lr),
      "max_examples": int(p.max_examples)})


def _path(job) -> str:
  c = config_lib.config_of(job)
  folder = c.pretraining.cache_dir or default_cache_dir()
  return os.path.join(folder, f"base-{run_cache.fingerprint(base_config(job))}.npz")


def base_data(job) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(x, y) of pretraining and (x, y) of its held-out evaluation for `job` (`_base_windows`)."""
  c = config_lib.config_of(job)
  return _base_windows(int(c.data.shakespeare.window), int(c.pretraining.max_examples),
                       int(c.seed))


def _base_windows(window: int, max_examples: int, seed: int):
  """The base plays' windows (`shakespeare.pretraining_windows`; `max_examples` 0: all), the
  last EVAL_FRACTION of them held out: (x, y, held-out x, held-out y)."""
  from fedjax_robust.data import shakespeare  # pylint: disable=g-import-not-at-top
  x, y = shakespeare.pretraining_windows(window=window, max_examples=max_examples or None,
                                         seed=seed)
  cut = len(y) - max(1, int(EVAL_FRACTION * len(y)))
  return x[:cut], y[:cut], x[cut:], y[cut:]


def pretrain(model: models.Model, x: np.ndarray, y: np.ndarray, *, steps: int, batch_size: int,
             lr: float, seed: int) -> Any:
  """The parameters of `model` after `steps` Adam steps (learning rate `lr`) on minibatches of
  `batch_size` examples of (x, y) drawn uniformly with replacement, from `model.init`; the key of
  the initialization and of every minibatch derives from `seed`."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  key = jax.random.fold_in(jax.random.key(seed), 0xBA5E)
  params = model.init(jax.random.fold_in(key, 0))
  opt = optax.adam(lr)
  ones = jnp.ones((batch_size,), jnp.float32)

  def loss(p, xb, yb):
    return models.masked_loss(model.loss, model.apply(p, xb), yb, ones)

  def step(carry, t):
    p, s = carry
    idx = jax.random.randint(jax.random.fold_in(key, t + 1), (batch_size,), 0, y.shape[0])
    value, grads = jax.value_and_grad(loss)(p, x[idx], y[idx])
    updates, s = opt.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), value

  (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), jnp.arange(steps)))(
      params)
  return params


def evaluate(model: models.Model, params: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
  """Mean cross-entropy (nats per character), its perplexity exp(·) and the next-character
  accuracy of `params` on (x, y)."""
  logits = jax.jit(model.apply)(params, jnp.asarray(x))
  ones = jnp.ones(len(y), jnp.float32)
  ce = float(models.masked_cross_entropy(logits, jnp.asarray(y), ones))
  return {"loss": ce, "perplexity": float(np.exp(ce)),
          "accuracy": float(models.masked_accuracy(logits, jnp.asarray(y), ones))}


def _save(path: str, params: Any, config: ml_collections.ConfigDict, info: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  tmp = path + ".tmp.npz"
  np.savez(tmp, **{f"param:{k}": v for k, v in flat.items()},
           config=config.to_json(sort_keys=True),
           fingerprint=run_cache.fingerprint(config), info=json.dumps(info),
           provenance=json.dumps(provenance.record(seed=int(config.seed))))
  os.replace(tmp, path)  # atomic: a killed pretraining leaves no half-written base


def _load(path: str, config: ml_collections.ConfigDict) -> tuple[Any, dict] | None:
  """The cached base at `path` when it was made by `config` with reusable provenance, else None
  (saying why when a file is there)."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as z:
      if str(z["fingerprint"]) != run_cache.fingerprint(config):
        print(f"pretrained base {path}: made by another configuration; pretraining again.")
        return None
      why = provenance.reuse_mismatch(json.loads(str(z["provenance"])))
      if why:
        print(f"pretrained base {path}: not reused ({why}); pretraining again.")
        return None
      flat = {tuple(k[len("param:"):].split("/")): jnp.asarray(z[k])
              for k in z.files if k.startswith("param:")}
      info = json.loads(str(z["info"]))
  except run_cache.NPZ_ERRORS as e:
    print(f"pretrained base {path}: unreadable ({type(e).__name__}); pretraining again.")
    return None
  return traverse_util.unflatten_dict(flat), info


@functools.lru_cache(maxsize=4)
def _cached(path: str, config_json: str, input_shape: tuple[int, ...], num_classes: int):
  config = ml_collections.ConfigDict(json.loads(config_json))
  loaded = _load(path, config)
  if loaded is not None:
    params, info = loaded
    return params, {**info, "cached": True, "path": path}
  # The base configuration holds no adapter option: the model it builds is the base.
  model = models.get(config.model, input_shape=input_shape, num_classes=num_classes,
                     **dict(config.model_options))
  x, y, hx, hy = _base_windows(config.window, config.max_examples, config.seed)
  start = time.perf_counter()
  params = pretrain(model, x, y, steps=config.steps, batch_size=config.batch_size,
                    lr=config.lr, seed=config.seed)
  jax.block_until_ready(params)
  info = {"seconds": time.perf_counter() - start, "examples": int(len(y)),
          "held_out_examples": int(len(hy)), **evaluate(model, params, hx, hy),
          "parameters": int(sum(np.size(v) for v in jax.tree.leaves(params)))}
  _save(path, params, config, info)
  return params, {**info, "cached": False, "path": path}


def base_params(job, *, input_shape: tuple[int, ...], num_classes: int) -> tuple[Any, dict]:
  """The pretrained base of `job` (`pretraining.enabled`) and what describes it (held-out loss,
  perplexity and accuracy on the base text, seconds, whether it came from the cache and where):
  loaded when cached by the same base configuration (`base_config`), else trained and saved."""
  config = base_config(job)
  return _cached(_path(job), config.to_json(sort_keys=True), tuple(input_shape), int(num_classes))


def describe(info: dict) -> str:
  """One line for the log."""
  where = "loaded from" if info["cached"] else f"trained in {info['seconds']:.1f} s, saved to"
  return (f"pretrained base: {info['parameters']:,} parameters, {where} {info['path']}; on "
          f"{info['held_out_examples']:,} held-out base windows: loss {info['loss']:.3f} nats/char "
          f"(perplexity {info['perplexity']:.2f}), next-character accuracy "
          f"{100 * info['accuracy']:.1f}%")
