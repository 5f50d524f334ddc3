"""Attacks by name: `get("alie", num_classes=10, options={"z": 1.0})`.

A model-poisoning function is called with what its signature asks for: `key` (randomized
attacks), `state` (attacks that carry state across rounds; the function then returns
`(updates, state)`), `aggregate` (adaptive attacks that query the server's rule).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping

from fedjax_robust import domains as D
from fedjax_robust.attacks import backdoors
from fedjax_robust.attacks import base
from fedjax_robust.attacks import faults
from fedjax_robust.errors import ConfigError
from fedjax_robust.errors import close_matches
from fedjax_robust.attacks import a3fl
from fedjax_robust.attacks import data_poisoning
from fedjax_robust.attacks import model_poisoning as mp

_CALL_ARGS = ("key", "updates", "byzantine_mask", "state", "aggregate")


@dataclasses.dataclass(frozen=True)
class _Entry:
  fn: Callable[..., Any]
  init: Callable[[int], Any] | None = None  # stateful attacks
  # The declared domain of every option (checked by `get`).
  domains: Mapping[str, D.Domain] = dataclasses.field(default_factory=dict)

  @property
  def options(self) -> dict[str, Any]:
    params = inspect.signature(self.fn).parameters
    return {k: p.default for k, p in params.items()
            if p.kind is p.KEYWORD_ONLY and k not in _CALL_ARGS}


_LINE_SEARCH = {"evals": D.Int(1, note="evaluations of the server's rule per round"),
                "start": D.FINITE, "delta": D.POSITIVE,
                "ratio": D.Float(0, 1, low_open=True, high_open=True)}
_AGR_AGNOSTIC = {"perturbation": D.Choice(*mp.PERTURBATIONS),
                 "gamma_init": D.POSITIVE,
                 "iterations": D.Int(1, note="halvings of the search for γ")}
_MODEL_POISONING: dict[str, _Entry] = {
    "sign_flip": _Entry(mp.sign_flip),
    "ipm": _Entry(mp.ipm, domains={"epsilon": D.FINITE}),
    "foe": _Entry(mp.foe, domains={"tau": D.FINITE}),
    "alie": _Entry(mp.alie, domains={"z": D.Float(optional=True,
                                                  nan_means="z from n and the realized b")}),
    "gaussian": _Entry(mp.gaussian, domains={"scale": D.NONNEGATIVE}),
    "mimic": _Entry(mp.mimic, domains={"index": D.Int(0, note="< n")}),
    "mimic_variance": _Entry(mp.mimic_variance, init=mp.mimic_variance_init,
                             domains={"warmup": D.NONNEGATIVE_INT}),
    "optimal_alie": _Entry(mp.optimal_alie, domains=_LINE_SEARCH),
    "optimal_ipm": _Entry(mp.optimal_ipm, domains=_LINE_SEARCH),
    "inf": _Entry(mp.inf),
    "nan": _Entry(mp.nan),
    "large": _Entry(mp.large, domains={"value": D.FINITE}),
    "fang": _Entry(mp.fang, domains={"factor": D.Float(1, low_open=True,
                                                      note="b > 1: how far beyond the extreme")}),
    "min_max": _Entry(mp.min_max, domains=_AGR_AGNOSTIC),
    "min_sum": _Entry(mp.min_sum, domains=_AGR_AGNOSTIC),
    "fang_krum": _Entry(mp.fang_krum, domains={
        "threshold": D.Float(0, low_open=True, note="λ below it ends the halving (paper: 1e-5)"),
        "iterations": D.Int(1, note="at most this many λ tried: evaluations of the rule")}),
    "adaptive": _Entry(mp.adaptive, domains={
        "directions": D.Tuple(D.Choice(*mp.ADAPTIVE_DIRECTIONS), min_length=1), **_LINE_SEARCH}),
}
_TARGET = {"target_label": D.Int(0, note="< the data set's number of classes"),
           "fraction": D.PROBABILITY}
_BACKDOOR = {**_TARGET, "patch_size": D.POSITIVE_INT, "value": D.FINITE,
             "trigger": D.Choice(*data_poisoning.TRIGGERS),
             "blend_alpha": D.Float(0, 1, low_open=True,
                                    note="the blended trigger's weight α; other triggers ignore it")}
# The options of the image-trigger backdoors that `data_poisoning.backdoor` takes.
_BACKDOOR_KEYS = tuple(_BACKDOOR)


def _model_replacement(key, x, y, *, target_label: int = 0, fraction: float = 0.5,
                       patch_size: int = 2, value: float = 1.0, trigger: str = "square",
                       blend_alpha: float = 0.2, boost: float = float("nan")):
  """Model replacement's options: its data part is `backdoor` (this function); `get` adds its
  update part, `model_poisoning.model_replacement` with γ = `boost`."""
  return data_poisoning.backdoor(key, x, y, target_label=target_label, fraction=fraction,
                                 patch_size=patch_size, value=value, trigger=trigger,
                                 blend_alpha=blend_alpha)


def _neurotoxin(key, x, y, *, target_label: int = 0, fraction: float = 0.5, patch_size: int = 2,
                value: float = 1.0, trigger: str = "square", blend_alpha: float = 0.2,
                top_k_ratio: float = 0.01, norm_bound: float = float("nan"),
                estimate: str = "previous"):
  """Neurotoxin's options: its data part is `backdoor` (this function); `get` adds its update
  part, `backdoors.neurotoxin` (the mask and the norm bound, with its state)."""
  return data_poisoning.backdoor(key, x, y, target_label=target_label, fraction=fraction,
                                 patch_size=patch_size, value=value, trigger=trigger,
                                 blend_alpha=blend_alpha)


_DBA = {**_TARGET,
        "parts": D.Int(1, note="local triggers, <= patch_size: bands of the corner's rows"),
        "patch_size": D.POSITIVE_INT, "value": D.FINITE,
        "trigger": D.Choice(*backdoors.DBA_TRIGGERS)}
_EDGE_CASE = {**_TARGET,
              "source_label": D.Int(0, note="< the number of classes, != target_label"),
              "style": D.Choice(*backdoors.EDGE_STYLES)}
_NEUROTOXIN = {**_BACKDOOR,
               "top_k_ratio": D.Float(0, 1, high_open=True,
                                      note="share of coordinates, largest |benign update|, "
                                           "the attacker leaves alone"),
               "norm_bound": D.Float(0, low_open=True, nan_means="no projection"),
               "estimate": D.Choice(*backdoors.NEUROTOXIN_ESTIMATES)}


def _text_backdoor(key, x, y, *, trigger: str = " O sweet ", target: str = "poison",
                   fraction: float = 0.5):
  """The text backdoor's options (strings of the data set's vocabulary); `get` encodes them and
  builds `data_poisoning.text_backdoor`."""
  raise AssertionError("built by get")  # pragma: no cover


_A3FL = {**_TARGET, "patch_size": D.POSITIVE_INT,
         "value": D.FINITE,
         "outer": D.Int(1, note="trigger iterations per round"),
         "adversarial_steps": D.NONNEGATIVE_INT,
         "adversarial_lr": D.NONNEGATIVE,
         "trigger_lr": D.POSITIVE,
         "balance": D.NONNEGATIVE,
         "low": D.FINITE, "high": D.FINITE}


def _a3fl(key, x, y, *, target_label: int = 0, fraction: float = 0.5, patch_size: int = 2,
          value: float = 1.0, outer: int = 5, adversarial_steps: int = 5,
          adversarial_lr: float = 0.1, trigger_lr: float = 0.05, balance: float = 1.0,
          low: float = 0.0, high: float = 1.0):
  """A3FL's options (`attacks.a3fl`): the backdoor's target, fraction and patch; the first
  trigger value; per round `outer` sign steps of size `trigger_lr` on the trigger against the
  global model and an adversarial model after `adversarial_steps` unlearning steps at
  `adversarial_lr`, weighted λ₀ = `balance` times their cosine; pixel values kept in
  [`low`, `high`] (digits: [0, 1]). `get` builds the attack."""
  raise AssertionError("built by get")  # pragma: no cover


_TEXT_BACKDOOR = {"trigger": D.Str(note="a phrase of the vocabulary's characters"),
                  "target": D.Str(note="its continuation, >= 1 character"),
                  "fraction": D.PROBABILITY}

_DATA_POISONING: dict[str, _Entry] = {
    "label_flip": _Entry(lambda key, x, y, *, num_classes: (x, data_poisoning.flip_labels(
        y, num_classes))),
    "backdoor": _Entry(data_poisoning.backdoor, domains=_BACKDOOR),
    "model_replacement": _Entry(_model_replacement, domains={**_BACKDOOR, "boost": D.Float(
        0, low_open=True, optional=True, nan_means="γ = n/b from the realized b")}),
    "text_backdoor": _Entry(_text_backdoor, domains=_TEXT_BACKDOOR),
    "dba": _Entry(backdoors.dba, domains=_DBA),
    "edge_case": _Entry(backdoors.edge_case, domains=_EDGE_CASE),
    "neurotoxin": _Entry(_neurotoxin, init=backdoors.neurotoxin_init, domains=_NEUROTOXIN),
    "a3fl": _Entry(_a3fl, domains=_A3FL),
}
# Attacks on images (a pixel trigger, a flip) and on text (a phrase of characters): each has no
# meaning on the other kind of input.
IMAGE_ONLY = ("backdoor", "model_replacement", "dba", "edge_case", "neurotoxin", "a3fl")
TEXT_ONLY = ("text_backdoor",)


def names() -> list[str]:
  """Every attack and inadvertent fault (`fedjax_robust.attacks.faults`) by name."""
  return sorted(["none", *_MODEL_POISONING, *_DATA_POISONING, *faults.names()])


def fault_names() -> list[str]:
  """The inadvertent faults (label noise, feature corruption, biased data, stale, absence)."""
  return faults.names()


def parse_population(spec: str) -> list[tuple[str, float]]:
  """A behaviour spec: one name ('alie': every faulty client runs it), or a mixture
  'label_noise:0.6,alie:0.4' (each faulty client of a draw runs behaviour k with probability
  π_k, drawn once per draw; the π_k are > 0 and sum to 1). Raises ConfigError naming what is
  wrong."""
  if not isinstance(spec, str) or not spec.strip():
    raise ConfigError(f"attack={spec!r}: expected an attack name or a mixture such as "
                      "'label_noise:0.6,alie:0.4'.")
  if ":" not in spec and "," not in spec:
    name = spec.strip()
    if name not in names():
      raise ConfigError(f"attack={spec!r} is outside its domain: one of "
                        f"{', '.join(repr(n) for n in names())}, or a mixture 'name:p,name:p'."
                        f"{close_matches(name, names())}")
    return [(name, 1.0)]
  out = []
  for item in spec.split(","):
    parts = [p.strip() for p in item.split(":")]
    if len(parts) != 2 or not parts[0]:
      raise ConfigError(f"attack={spec!r}: {item!r} is not 'name:probability'; a mixture is "
                        "comma-separated pairs such as 'label_noise:0.6,alie:0.4'.")
    name, prob = parts
    try:
      p = float(prob)
    except ValueError:
      raise ConfigError(f"attack={spec!r}: probability {prob!r} of {name!r} is not a "
                        "number.") from None
    if name not in names() or name == "none":
      raise ConfigError(f"attack={spec!r}: unknown behaviour {name!r}; allowed: "
                        f"{', '.join(n for n in names() if n != 'none')}."
                        f"{close_matches(name, names())}")
    if not 0 < p <= 1:
      raise ConfigError(f"attack={spec!r}: probability of {name!r} must lie in (0, 1], got {p}.")
    out.append((name, p))
  if len({n for n, _ in out}) != len(out):
    raise ConfigError(f"attack={spec!r}: a behaviour appears twice.")
  total = sum(p for _, p in out)
  if abs(total - 1) > 1e-6:
    raise ConfigError(f"attack={spec!r}: the probabilities sum to {total:g}, not 1.")
  return out


def model_poisoning_names() -> list[str]:
  """Attacks that replace Byzantine rows of the update matrix."""
  return sorted(_MODEL_POISONING)


def data_poisoning_names() -> list[str]:
  """Attacks that change a Byzantine client's examples and labels (they need class labels)."""
  return sorted(_DATA_POISONING)


def options(name: str) -> dict[str, Any]:
  """The keyword options of an attack and their defaults."""
  if name == "none":
    return {}
  if name in faults.names():
    return faults.options(name)
  return {k: v for k, v in _entry(name).options.items() if k != "num_classes"}


def _entry(name: str) -> _Entry:
  entry = _MODEL_POISONING.get(name) or _DATA_POISONING.get(name)
  if entry is None:
    raise ConfigError(f"unknown attack {name!r}; available: {', '.join(names())}.")
  return entry


def option_domains(name: str) -> dict[str, D.Domain]:
  """The declared domain of each option of an attack."""
  if name in faults.names():
    return faults.option_domains(name)
  return {} if name == "none" else dict(_entry(name).domains)


def _model_poisoning(name: str, entry: _Entry, opts: dict[str, Any]) -> base.Attack:
  params = inspect.signature(entry.fn).parameters
  fn = functools.partial(entry.fn, **opts)

  def poison(key, updates, byzantine_mask, state, aggregate):
    kwargs = {}
    if "aggregate" in params:
      kwargs["aggregate"] = aggregate
    if "state" in params:
      kwargs["state"] = state
    args = (key, updates, byzantine_mask) if "key" in params else (updates, byzantine_mask)
    out = fn(*args, **kwargs)
    return out if "state" in params else (out, state)

  init = entry.init
  return base.Attack(name, poison=poison,
                     init=(lambda d, n=None: init(d)) if init else (lambda d, n=None: ()))


def get(name: str, *, num_classes: int | None,
        options: Mapping[str, Any] | None = None, input_shape=None) -> base.Attack:
  """Builds the attack `name` with keyword `options` (e.g. ALIE's z, backdoor's target_label);
  `num_classes` None means real-valued targets (regression), which only the attacks that leave
  the data alone accept. Inadvertent faults (`fedjax_robust.attacks.faults`) are built here too.
  `input_shape` (an example's shape, `[H, W, C]` for images): what A3FL's learned trigger is
  shaped by (its state cannot be initialized without it)."""
  if name in faults.names():
    return faults.get(name, num_classes=num_classes, options=options)
  opts = {k: v for k, v in dict(options or {}).items()}
  allowed = globals()["options"](name)
  unknown = sorted(set(opts) - set(allowed))
  if unknown:
    raise ConfigError(f"unknown option(s) {unknown} for attack {name!r}; allowed: "
                      f"{sorted(allowed) or 'none'}.")
  if name != "none":
    D.check_options(f"attack_options.{name}", opts, _entry(name).domains)
  if num_classes is None:
    if name in _DATA_POISONING:
      raise ConfigError(f"attack {name!r} changes class labels, and a regression task has none; "
                        f"allowed there: {', '.join(['none', *model_poisoning_names()])}.")
  elif not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
    raise ConfigError(f"num_classes must be an int >= 2 or None (regression), got "
                      f"{num_classes!r}.")
  if name == "none":
    return base.Attack(name)
  if name in _MODEL_POISONING:
    return _model_poisoning(name, _MODEL_POISONING[name], opts)
  if name == "label_flip":
    return base.Attack(name, poison_data=functools.partial(_DATA_POISONING[name].fn,
                                                           num_classes=num_classes))
  if name == "text_backdoor":
    return _get_text_backdoor({**allowed, **opts}, num_classes)
  full = {**allowed, **opts}
  for label in ("target_label", "source_label"):
    if label in full and not 0 <= full[label] < num_classes:
      raise ConfigError(f"attack_options.{name}.{label}={full[label]} must lie "
                        f"in [0, {num_classes}): the data set has {num_classes} classes.")
  if name == "a3fl":
    return _get_a3fl(full, input_shape)
  return _IMAGE_BACKDOORS[name](full)


def _get_a3fl(full: dict[str, Any], input_shape) -> base.Attack:
  """A3FL (`attacks.a3fl`): the trigger δ in the attack's state, adapted each round before
  local training, stamped on a `fraction` of the Byzantine clients' examples (relabelled to the
  target) and measured as the attackers hold it."""
  if not full["low"] < full["high"]:
    raise ConfigError(f"attack_options.a3fl.low={full['low']} must be below "
                      f"attack_options.a3fl.high={full['high']} (the pixel range).")
  adapt_options = {k: full[k] for k in ("target_label", "patch_size", "outer",
                                        "adversarial_steps", "adversarial_lr", "trigger_lr",
                                        "balance", "low", "high")}

  def init(d, n=None):
    del d, n
    if input_shape is None or len(input_shape) != 3:
      raise ConfigError(f"attack 'a3fl' learns an image trigger [H, W, C]; it needs the "
                        f"examples' shape (input_shape), got {input_shape!r}.")
    return a3fl.init_trigger(tuple(input_shape), value=full["value"])

  def adapt(key, logits, params, state, x, y, weights):
    del key
    return a3fl.adapt(state, logits, params, x, y, weights, **adapt_options)

  mask = lambda shape: a3fl.patch_mask(shape, full["patch_size"])

  def poison_data(key, x, y, *, state):
    return data_poisoning.poison_fraction(key, x, y,
                                          a3fl.stamp_learned(x, state, mask(state.shape)),
                                          full["target_label"], full["fraction"])

  return base.Attack("a3fl", init=init, adapt=adapt, poison_data=poison_data,
                     trigger=lambda x, state: a3fl.stamp_learned(x, state, mask(state.shape)),
                     target_label=full["target_label"], stateful_data=True)


def _backdoor_trigger(full: dict[str, Any]):
  """The evaluation's trigger of an image backdoor: its `trigger` on the whole image."""
  return functools.partial(data_poisoning.apply_trigger, trigger=full["trigger"],
                           patch_size=full["patch_size"], value=full["value"],
                           blend_alpha=full["blend_alpha"])


def _get_backdoor(full: dict[str, Any], name: str = "backdoor", poison=None,
                  init=None) -> base.Attack:
  kwargs = {} if init is None else {"init": init}
  return base.Attack(
      name, poison=poison, **kwargs,
      poison_data=functools.partial(data_poisoning.backdoor,
                                    **{k: full[k] for k in _BACKDOOR_KEYS}),
      trigger=_backdoor_trigger(full), target_label=full["target_label"])


def _get_model_replacement(full: dict[str, Any]) -> base.Attack:
  """The backdoor, and each Byzantine row scaled by γ = `boost` (`mp.model_replacement`)."""
  poison = _model_poisoning("model_replacement", _Entry(mp.model_replacement),
                            {"boost": full["boost"]}).poison
  return _get_backdoor(full, "model_replacement", poison)


def _get_neurotoxin(full: dict[str, Any]) -> base.Attack:
  """The backdoor, and each Byzantine row masked and bounded (`backdoors.neurotoxin`)."""
  update = {k: full[k] for k in ("top_k_ratio", "norm_bound", "estimate")}

  def poison(key, updates, byzantine_mask, state, aggregate):
    del key, aggregate
    return backdoors.neurotoxin(updates, byzantine_mask, state, **update)

  return _get_backdoor(full, "neurotoxin", poison,
                       init=lambda d, n=None: backdoors.neurotoxin_init(d))


def _get_dba(full: dict[str, Any]) -> base.Attack:
  """DBA: client i stamps local trigger i mod parts (`indexed`); the evaluation the global one."""
  if full["parts"] > full["patch_size"]:
    raise ConfigError(f"attack_options.dba.parts={full['parts']} must be <= "
                      f"attack_options.dba.patch_size={full['patch_size']}: each local trigger "
                      "is a band of at least one row of the patch_size² corner.")
  return base.Attack(
      "dba", poison_data=functools.partial(backdoors.dba, **{k: full[k] for k in _DBA}),
      trigger=functools.partial(data_poisoning.apply_trigger, trigger=full["trigger"],
                                patch_size=full["patch_size"], value=full["value"]),
      target_label=full["target_label"], indexed=True)


def _get_edge_case(full: dict[str, Any]) -> base.Attack:
  """The edge-case backdoor; its success rate is over the source class (`source_label`)."""
  if full["source_label"] == full["target_label"]:
    raise ConfigError(f"attack_options.edge_case.source_label={full['source_label']} equals "
                      f"attack_options.edge_case.target_label={full['target_label']}: they "
                      "must differ (the backdoor relabels the source class to the target).")
  return base.Attack(
      "edge_case",
      poison_data=functools.partial(backdoors.edge_case, **{k: full[k] for k in _EDGE_CASE}),
      trigger=functools.partial(backdoors.edge_style, style=full["style"]),
      target_label=full["target_label"], source_label=full["source_label"])


_IMAGE_BACKDOORS = {"backdoor": _get_backdoor, "model_replacement": _get_model_replacement,
                    "neurotoxin": _get_neurotoxin, "dba": _get_dba,
                    "edge_case": _get_edge_case}


def _get_text_backdoor(full: dict[str, Any], num_classes: int) -> base.Attack:
  """The text backdoor with its phrase and continuation encoded in the Shakespeare vocabulary
  (`data.shakespeare`); a character outside it, an empty target or a vocabulary of another size
  than the data set's is a ConfigError."""
  from fedjax_robust.data import shakespeare  # pylint: disable=g-import-not-at-top
  if num_classes != shakespeare.NUM_CLASSES:
    raise ConfigError(f"attack 'text_backdoor' needs the shakespeare vocabulary "
                      f"({shakespeare.NUM_CLASSES} classes), got {num_classes} classes.")
  for key in ("trigger", "target"):
    bad = sorted(set(full[key]) - set(shakespeare.VOCABULARY))
    if bad or not full[key]:
      raise ConfigError(f"attack_options.text_backdoor.{key}={full[key]!r}: "
                        + (f"characters {bad} are not in the vocabulary." if bad else
                           "must hold at least one character."))
  trigger = tuple(int(i) for i in shakespeare.encode(full["trigger"]))
  target = tuple(int(i) for i in shakespeare.encode(full["target"]))
  return base.Attack(
      "text_backdoor",
      poison_data=functools.partial(data_poisoning.text_backdoor, trigger=trigger, target=target,
                                    fraction=full["fraction"]),
      trigger=functools.partial(data_poisoning.stamp_text_trigger, phrase=trigger),
      target_label=target[0])
