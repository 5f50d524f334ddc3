"""The commands that README.md, BUILD.md and the launchers' and configs' docstrings document,
read from the documents themselves, and how each is run at a tiny size by
`tests/test_documented_commands.py`.

A command is any `python launch/<script>.py ...` or `python -c "..."` written in a code block
(fenced, or indented by four spaces), an inline code span (which may wrap over lines) or a
docstring, with its `\\` continuations joined. Optional `[...]` parts are kept (their tokens are
part of what is documented), placeholders (`<rule>`, `...`) are dropped. A command that cannot
run here is listed in `NOT_RUN` with the reason; every other one runs. The set-up and test
commands (`pip install`, `python -m pytest`) are what CI itself runs, and are not searched for.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import os
import re
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Documents searched for commands: the two guides, and the module docstrings of the launchers
# and of every shipped config (what `python launch/x.py --help` and a config's header show).
DOCUMENTS = ("README.md", "BUILD.md", "docs/*.md", "launch/*.py", "configs/*.py")

# Documented commands that the smoke test does not run, with the reason (matched as prefixes
# of the normalized command).
NOT_RUN = {
    'python -c "import tensorflow_datasets as tfds; tfds.builder(':
        "downloads a tfds data set: needs the internet (the loading code is tested on "
        "tfds.testing.mock_data in tests/test_data.py)",
}

# Keys that set a job's size: always replaced by the tiny value, whatever the command says.
_TINY_TRAIN = {"num_samples": "2", "training.num_rounds": "2", "training.eval_every": "1"}
# Grid axes of each sweep config shrunk to one or two cheap points, unless the command sets
# the axis itself (then its own values run: they are what it documents).
_TINY_GRID = {
    "configs/sweep_core.py": {"grid.aggregators": "mean", "grid.corruption": "0.2",
                              "grid.mu_h": "independent"},
    "configs/theory_synthetic.py": {"grid.aggregators": "trimmed_mean",
                                    "grid.corruption": "0.2", "grid.mu_h": "independent"},
    "configs/theory_digits.py": {"grid.aggregators": "trimmed_mean", "grid.corruption": "0.2",
                                 "grid.mu_h": "independent"},
    "configs/faults.py": {"grid.aggregators": "mean", "grid.threats": "label_noise"},
    "configs/sweep_rfa.py": {"grid.rules": "rfa_one_step", "grid.threats": "alie"},
    "configs/sweep_deployed.py": {},
    "configs/study_groups.py": {"grid.aggregators": "trimmed_mean", "grid.shift": "6",
                                "grid.placement": "concentrated,worst_case"},
    "configs/study_groups_digits.py": {"grid.aggregators": "trimmed_mean",
                                       "grid.grouping": "labels",
                                       "grid.placement": "concentrated,worst_case"},
    "configs/study_mu_aware.py": {"grid.mu_h": "independent",
                                  "grid.rules": "trimmed_mean,posterior_trim"},
    "configs/sweep_mu_aware.py": {"grid.blocks": "main", "grid.threats": "alie",
                                  "grid.mu_h": "independent",
                                  # a tuned classic rule (and its tuning points), a prior rule
                                  "grid.rules": "trimmed_mean,posterior_filter"},
    "configs/sweep_dp_compression.py": {"grid.privacy": "none", "grid.compression": "none",
                                        "grid.rules": "trimmed_mean"},
    "configs/sweep_privacy.py": {"grid.mechanism": "central,distributed", "grid.epsilon": "8",
                                 "grid.sampling": "1", "grid.mu_h": "independent",
                                 "grid.threat": "alie_p0.1",
                                 "grid.rules": "trimmed_mean"},
    "configs/sweep_dp_dimension.py": {"grid.tasks": "synthetic", "grid.synthetic_d": "100",
                                      "grid.rules": "trimmed_mean"},
    "configs/shakespeare.py": {"grid.aggregators": "trimmed_mean", "grid.law": "plays",
                               "grid.finetuning": "lora"},
    # an attack and a defence that exist on every branch (the planned ones land in parallel)
    "configs/backdoors.py": {"grid.attack": "model_replacement", "grid.defence": "norm_clipping",
                             "grid.mu_h": "independent"},
}
# The sizes of a text job beyond the draws and rounds (a configuration's `base` keys): a few
# windows per client and a base pretrained for a few steps, cached in the command's workdir.
_TINY_TEXT = {"data.shakespeare.max_examples_per_client": "16",
              "data.shakespeare.max_test_examples": "32", "pretraining.steps": "3",
              "pretraining.max_examples": "256"}
_TEXT_CONFIGS = ("configs/shakespeare.py",)
_TINY_BENCH = {"grid": "((10,100),)", "rules": "mean,trimmed_mean", "repeats": "1",
               "reference_repeats": "1", "monte_carlo.sample_counts": "(1,2)",
               "monte_carlo.num_rounds": "2", "monte_carlo.byzfl": "False",
               # mode=scale: one small point of each model unless the command names its own
               "scale.points": '("mlp:8","cnn:4","char_transformer:1x8")',
               "scale.clients": "(4,)", "scale.samples": "(8,)", "scale.num_rounds": "1"}


@dataclasses.dataclass(frozen=True)
class Command:
  source: str        # "BUILD.md:32"
  text: str          # the command as documented, continuations joined
  argv: tuple        # its words, placeholders dropped


def _documents():
  for pattern in DOCUMENTS:
    for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
      rel = os.path.relpath(path, ROOT)
      with open(path, encoding="utf-8") as fh:
        text = fh.read()
      if rel.endswith(".py"):
        doc = ast.get_docstring(ast.parse(text), clean=False) or ""
        offset = text.find(doc.splitlines()[0]) if doc else 0
        yield rel, doc, text.count("\n", 0, max(offset, 0))
      else:
        yield rel, text, 0


_START = re.compile(r"(?:\S*/)?python3?\s+(?:launch/\w+\.py|-c\s)|(?<=`)launch/\w+\.py\s")


def _spans(text: str):
  """Candidate command strings: each line's tail from a `python` invocation on, with `\\`
  continuations (and, inside an inline code span, the span's wrapped lines) joined."""
  lines = text.split("\n")
  i = 0
  while i < len(lines):
    line = lines[i]
    m = _START.search(line)
    if not m:
      i += 1
      continue
    start_line = i
    tail = line[m.start():]
    # Inside an inline code span: the span may wrap; it ends at the next backtick.
    inline = line[:m.start()].count("`") % 2 == 1
    if inline:
      while "`" not in tail and i + 1 < len(lines):
        i += 1
        tail += " " + lines[i].strip()
      tail = tail.split("`")[0]
    else:
      while tail.rstrip().endswith("\\") and i + 1 < len(lines):
        i += 1
        tail = tail.rstrip()[:-1] + " " + lines[i].strip()
      tail = tail.split("  #")[0]  # a trailing comment in a code block
    yield start_line, tail.strip()
    i += 1


def _words(text: str) -> tuple:
  """The command's words: shell-split, `[`/`]` of optional parts removed, placeholders and
  shell control (`&`, `;`, `done`) ending the command."""
  text = text.replace("[", " ").replace("]", " ")
  words = []
  for word in shlex.split(text):
    if word in ("&", ";", "&&", "|", "done", "wait"):
      break
    if "<" in word or "..." in word:
      continue
    words.append(word)
  if words[0].startswith("launch/"):  # `launch/bench.py --config...` written without python
    words.insert(0, "python")
  words[0] = "python"  # .venv/bin/python, python3: the test's own interpreter runs it
  return tuple(words)


def commands() -> list[Command]:
  found = {}
  for rel, text, line0 in _documents():
    for line, span in _spans(text):
      try:
        argv = _words(span)
      except ValueError:  # unbalanced quotes: a span cut by the document's own wrapping
        continue
      found.setdefault(argv, Command(f"{rel}:{line0 + line + 1}", span, argv))
  return list(found.values())


def reason_not_run(command: Command) -> str | None:
  joined = shlex.join(command.argv)
  normalized = command.text.replace(".venv/bin/python", "python")
  for prefix, why in NOT_RUN.items():
    if normalized.startswith(prefix) or joined.startswith(prefix):
      return why
  return None


def _flag(argv, key):
  for word in argv:
    if word.startswith(f"--{key}="):
      return word.split("=", 1)[1]
  return None


def tiny(command: Command, workdir: str) -> list[str]:
  """The command's argv at a tiny size, writing into `workdir`."""
  argv = list(command.argv)
  if len(argv) < 2 or not argv[1].startswith("launch/"):
    return argv
  script = os.path.basename(argv[1])
  config = _flag(argv, "config") or _DEFAULT_CONFIGS.get(argv[1])
  extra = []
  if script == "train.py":
    extra = [f"--config.{k}={v}" for k, v in _TINY_TRAIN.items()]
  elif script == "sweep.py":
    config = config or _DEFAULT_CONFIGS["launch/sweep.py"]
    extra = [f"--config.base.{k}={v}" for k, v in _TINY_TRAIN.items()]
    extra += [f"--config.{k}={v}" for k, v in _TINY_GRID[config].items()
              if _flag(argv, f"config.{k}") is None]
  elif script == "bench.py":
    extra = [f"--config.{k}={v}" for k, v in _TINY_BENCH.items()
             if k not in ("grid", "scale.points") or _flag(argv, f"config.{k}") is None]
  if config in _TEXT_CONFIGS:  # every text configuration here is a sweep's (keys under base.)
    extra += [f"--config.base.{k}={v}" for k, v in
              {**_TINY_TEXT, "pretraining.cache_dir": os.path.join(workdir, "pretrained")}.items()]
  if script == "pretrain.py":  # no workdir: it writes its base into pretraining.cache_dir
    return argv + extra
  return argv + extra + [f"--workdir={workdir}"]


# The config each launcher runs without --config.
_DEFAULT_CONFIGS = {"launch/train.py": "configs/default.py",
                    "launch/pretrain.py": "configs/shakespeare.py",
                    "launch/sweep.py": "configs/sweep_core.py",
                    "launch/bench.py": "configs/bench.py"}


def configs_without_command(found: list[Command]) -> list[str]:
  """Shipped configs (configs/*.py) that no documented command runs."""
  used = {_flag(c.argv, "config") or _DEFAULT_CONFIGS.get(c.argv[1]) for c in found}
  shipped = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))}
  return sorted(shipped - used - {"configs/__init__.py"})
