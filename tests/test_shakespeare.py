"""The Shakespeare natural partition: the parser on hand-written Markdown, the vocabulary against
the corpus, the clients' splits against their roles' own text, selection and features."""

import numpy as np
import pytest

from fedjax_robust.data import shakespeare as sh

SNIPPET = """# The Play

## ACT I

### SCENE I. A heath.

_Thunder. Enter three Witches,
meeting_

**First Witch**  
When shall we three meet again  
In thunder, lightning,  or in rain?

**ALL**  
Fair is foul, and foul is fair:  
Hover through the fog.

_Exeunt_

**MACBETH**  
_\\[Aside]_  
So foul \\- and fair  
a day *[Reads.]* I have not seen.

_Enter BANQUO_

Speak, if you can. _\\[To BANQUO]_ What are you?  
[Aside]_  
Stay, you imperfect speakers!
BISHOP

**OF WINCHESTER**  
Peace, lords.

**Scene III**  
Eastcheap. The Boar's-Head Tavern.

_Enter FALSTAFF and BARDOLPH_

**MACBETH & BANQUO**  
Whither are they vanish'd?

**macbeth**  
Go; away!

**Here stand I**  
lady, dart thy skill at me.

## ACT II

Unlabelled prologue text.

**Lords**  
Amen.
"""


@pytest.fixture(scope="module")
def clients():
  return sh.load(12, max_test_examples=None)


def test_parser_gives_the_expected_speeches_on_a_snippet():
  title, speeches = sh.parse_play(SNIPPET)
  assert title == "The Play"
  assert speeches == [
      ("First Witch", "When shall we three meet again In thunder, lightning, or in rain?"),
      ("ALL", "Fair is foul, and foul is fair: Hover through the fog."),
      ("MACBETH", "So foul - and fair a day I have not seen. Speak, if you can. What are you? "
                  "Stay, you imperfect speakers!"),  # BISHOP went to the split label below
      ("BISHOP OF WINCHESTER", "Peace, lords."),
      ("MACBETH & BANQUO", "Whither are they vanish'd?"),
      ("macbeth", "Go; away! Here stand I lady, dart thy skill at me."),
      ("Lords", "Amen."),
  ]


@pytest.mark.parametrize("label", ["ALL", "All", "Both", "BOTH", "Lords", "All The People",
                                   "Some Speak", "Several Citizens", "MARCELLUS & BERNARDO",
                                   "Lord Mayor & Citizens", "First Lord and Second Lord",
                                   "Ghosts of young Princes", "ROSENCRANTZ: & GUILDENSTERN:",
                                   "Senators", "KNIGHTS"])
def test_choral_labels_are_collective(label):
  assert sh.is_collective(label)


@pytest.mark.parametrize("label", ["HAMLET", "First Lord", "Lord", "Lord Mayor", "KING OF FRANCE",
                                   "Ghost of CLARENCE", "TITUS ANDRONICUS", "Chorus", "Citizen",
                                   "PRINCESS", "Second Senator"])
def test_single_speakers_are_not_collective(label):
  assert not sh.is_collective(label)


def test_choral_speeches_become_no_role_and_case_variants_merge():
  macbeth = [s for p in sh.plays() if p.slug == "macbeth" for s, _ in p.speeches]
  assert "ALL" in macbeth  # the plays hold choral speeches ...
  speakers = [r.speaker for r in sh.roles(exclude_plays=())]
  assert not any(sh.is_collective(s) for s in speakers)  # ... no role is one
  keys = [(r.play, r.speaker.casefold()) for r in sh.roles(exclude_plays=())]
  assert len(keys) == len(set(keys))
  nurse = [r.speaker for r in sh.roles(exclude_plays=()) if r.play == "romeo-and-juliet"
           and r.speaker.casefold() == "nurse"]
  assert nurse == ["Nurse"]  # `Nurse` and `NURSE` in the source: one role, its first spelling


def test_vocabulary_is_exactly_the_corpus_characters():
  corpus = set("".join(t for p in sh.plays() for _, t in p.speeches))
  assert set(sh.VOCABULARY) == corpus
  assert list(sh.VOCABULARY) == sorted(set(sh.VOCABULARY))
  assert sh.NUM_CLASSES == len(sh.VOCABULARY) + 1
  assert len(sh.plays()) == 38


def test_encode_decode():
  text = "O Romeo, Romeo! wherefore art thou Romeo?"
  ids = sh.encode(text)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, [sh.VOCABULARY.index(c) + 1 for c in text])
  assert sh.decode(ids) == text
  np.testing.assert_array_equal(sh.encode("a\u00e9b~"), [sh.VOCABULARY.index("a") + 1, 0,
                                                          sh.VOCABULARY.index("b") + 1, 0])
  assert sh.decode([0, sh.VOCABULARY.index("z") + 1]) == "z"
  with pytest.raises(ValueError, match="token ids"):
    sh.decode([sh.NUM_CLASSES])


def test_summary_pins_the_corpus():
  assert sh.summary() == {"plays": 38, "roles": 1304, "characters": 4404888, "roles_1000": 657,
                          "roles_10000": 137, "choral_speeches": 245, "choral_characters": 7818}


def test_every_client_is_one_role_with_disjoint_ordered_parts(clients):
  window = 80
  test_targets = []
  rng = np.random.default_rng(0)
  for i, role in enumerate(clients.roles):
    text = role.text
    length = len(text)
    b = length - int(0.2 * length)
    a = b - int(0.1 * length)
    # targets: train text[window:a], held-out text[b:], in order, and nothing else
    assert sh.decode(clients.ys[i]) == text[window:a]
    assert sh.decode(clients.hold_ys[i]) == text[b:]
    test_targets.append(text[a:b])
    for xs, start in ((clients.xs[i], window), (clients.hold_xs[i], b)):
      assert xs.dtype == np.float32
      for j in rng.choice(len(xs), 20, replace=False):
        t = start + j
        assert sh.decode(xs[j].astype(np.int64)) == text[t - window:t]
  assert sh.decode(clients.test_y) == "".join(test_targets)  # the pooled test parts, in order
  j = rng.choice(len(clients.test_y), 50, replace=False)
  offsets = np.cumsum([0] + [len(t) for t in test_targets])
  for k in j:
    i = np.searchsorted(offsets, k, side="right") - 1
    text = clients.roles[i].text
    a = len(text) - int(0.2 * len(text)) - int(0.1 * len(text))
    t = a + k - offsets[i]
    assert sh.decode(clients.test_x[k].astype(np.int64)) == text[t - window:t]


def test_play_ids_name_the_clients_plays(clients):
  names = [clients.play_names[k] for k in clients.play_ids]
  assert names == [r.play for r in clients.roles]
  first = [clients.play_ids[[r.play for r in clients.roles].index(p)] for p in clients.play_names]
  assert first == list(range(len(clients.play_names)))


def test_largest_selection_takes_the_longest_roles(clients):
  others = [len(r.text) for r in sh.roles() if r not in clients.roles]
  lengths = [len(r.text) for r in clients.roles]
  assert lengths == sorted(lengths, reverse=True)
  assert min(lengths) >= max(others)


def test_random_selection_is_reproducible_and_avoids_the_base_plays():
  kw = dict(max_examples_per_client=5, max_test_examples=10, min_chars=2000)
  first = sh.load(40, selection="random", seed=3, **kw)
  again = sh.load(40, selection="random", seed=3, **kw)
  other = sh.load(40, selection="random", seed=4, **kw)
  assert first.roles == again.roles
  assert first.roles != other.roles
  for c in (first, other):
    assert not {r.play for r in c.roles} & set(sh.BASE_PLAYS)
    assert all(len(r.text) >= 2000 for r in c.roles)
  assert not {r.play for r in sh.roles()} & set(sh.BASE_PLAYS)
  assert {r.play for r in sh.roles(exclude_plays=())} >= set(sh.BASE_PLAYS)


def test_max_examples_keeps_evenly_spaced_train_and_held_out_windows(clients):
  capped = sh.load(3, max_examples_per_client=7, max_test_examples=25)
  assert len(capped.test_y) == 25
  for i in range(3):
    m = len(clients.ys[i])
    keep = (np.arange(7) * m) // 7
    np.testing.assert_array_equal(capped.xs[i], clients.xs[i][keep])
    np.testing.assert_array_equal(capped.ys[i], clients.ys[i][keep])
    h = len(clients.hold_ys[i])
    np.testing.assert_array_equal(capped.hold_xs[i], clients.hold_xs[i][(np.arange(7) * h) // 7])
    np.testing.assert_array_equal(capped.hold_ys[i], clients.hold_ys[i][(np.arange(7) * h) // 7])


def test_features_put_same_play_roles_closer_than_chance():
  c = sh.load(120, selection="random", seed=0, max_examples_per_client=1, max_test_examples=1)
  f = c.features
  np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0)
  dist = ((f[:, None] - f[None]) ** 2).sum(-1)
  np.fill_diagonal(dist, np.inf)
  same = c.play_ids[dist.argmin(1)] == c.play_ids
  n = len(f)
  chance = np.mean([(np.sum(c.play_ids == p) - 1) / (n - 1) for p in c.play_ids])
  assert same.mean() > 4 * chance


def test_pretraining_windows_are_the_base_plays_text():
  x, y = sh.pretraining_windows(window=30, base_plays=("macbeth",))
  text = " ".join(t for p in sh.plays() if p.slug == "macbeth" for _, t in p.speeches)
  assert sh.decode(y) == text[30:]
  for j in (0, 777, len(y) - 1):
    assert sh.decode(x[j].astype(np.int64)) == text[j:j + 30]
  xs, ys = sh.pretraining_windows(window=30, base_plays=("macbeth",), max_examples=100, seed=1)
  assert xs.shape == (100, 30) and ys.dtype == np.int32
  full = {tuple(row) for row in x}
  assert all(tuple(row) in full for row in xs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_clients=10_000), "only [0-9]+ roles"),
    (dict(num_clients=0), "num_clients"),
    (dict(num_clients=5, min_chars=50), "min_chars must be >= [0-9]+ .window=80"),
    (dict(num_clients=5, selection="best"), "selection must be one of largest, random"),
    (dict(num_clients=5, test_fraction=0.5, holdout_fraction=0.5), "test_fraction"),
    (dict(num_clients=5, base_plays=("hamlett",)), "unknown plays .'hamlett'."),
    (dict(num_clients=5, max_examples_per_client=0), "max_examples_per_client"),
])
def test_bad_arguments_raise_readable_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sh.load(**kwargs)


def test_min_chars_allowed_keeps_every_part_nonempty():
  for window, tf, hf in ((80, 0.1, 0.2), (10, 0.3, 0.0), (5, 0.05, 0.45)):
    need = sh.min_chars_allowed(window=window, test_fraction=tf, holdout_fraction=hf)
    for length in range(need, need + 300):
      a, b = sh.split_points(length, window=window, test_fraction=tf, holdout_fraction=hf)
      assert a > window and (b > a or tf == 0) and (length > b or hf == 0)
    length = need - 1
    a, b = sh.split_points(length, window=window, test_fraction=tf, holdout_fraction=hf)
    assert not (a > window and (b > a or tf == 0) and (length > b or hf == 0))
