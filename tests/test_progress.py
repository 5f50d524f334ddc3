"""report/progress.py: on a non-TTY stream the lines are byte-identical to the launcher's format
of before (copied below as the reference); on a TTY a live bar with the share done and the ETA,
counted down between reports, log lines above it, and the plain lines left in its place."""

import io
import re

from fedjax_robust import experiment
from fedjax_robust.report import progress


def reference_progress(p, out):
  """launch/train.py::_progress as it was before report/progress.py (printing to `out`)."""
  eta = ("after the next step (this one compiled)" if p["eta"] is None
         else experiment.human_seconds(p["eta"]))
  print(f"  [{100 * p['fraction']:5.1f}% of the training] {p['spec']}: chunk {p['chunk']}/"
        f"{p['num_chunks']}, round {p['round']}/{p['num_rounds']}  elapsed "
        f"{experiment.human_seconds(p['elapsed'])}  ETA {eta}", flush=True, file=out)
  if p["after"] is not None:
    print("  training done; next: " + ", ".join(p["after"] + ("writing the tables and files",))
          + " (not in the ETA)", flush=True, file=out)


REPORTS = [
    {"spec": "mean", "chunk": 1, "num_chunks": 2, "round": 5, "num_rounds": 10,
     "fraction": 1 / 12, "elapsed": 12.4, "eta": None, "after": None},
    {"spec": "mean", "chunk": 1, "num_chunks": 2, "round": 10, "num_rounds": 10,
     "fraction": 2 / 12, "elapsed": 13.0, "eta": 200.2, "after": None},
    {"spec": "nnm+trimmed_mean", "chunk": 2, "num_chunks": 2, "round": 10, "num_rounds": 10,
     "fraction": 0.5, "elapsed": 4000.0, "eta": 7321.0, "after": None},
    {"spec": "honest_optimum", "chunk": 1, "num_chunks": 1, "round": 10, "num_rounds": 10,
     "fraction": 1.0, "elapsed": 4100.6, "eta": 0.0,
     "after": ("the worst-case search", "the theory")},
]


class FakeTTY(io.StringIO):

  def isatty(self):
    return True


class FakeClock:

  def __init__(self):
    self.t = 1000.0

  def __call__(self):
    return self.t


_CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _pieces(text: str) -> list[str]:
  """The text between cursor moves: ANSI sequences removed, split at carriage returns and
  newlines."""
  return [s for s in re.split(r"[\r\n]", _CSI.sub("", text)) if s.strip()]


def test_not_a_tty_gives_the_plain_lines_byte_for_byte():
  got, want = io.StringIO(), io.StringIO()
  with progress.Terminal(got) as terminal:
    terminal.log("data digits: 6 clients")
    for p in REPORTS:
      terminal.update(p)
  print("data digits: 6 clients", file=want)
  for p in REPORTS:
    reference_progress(p, want)
  assert got.getvalue() == want.getvalue()
  assert "\x1b" not in got.getvalue()
  other = io.StringIO()
  terminal = progress.Terminal(other)
  update, log, close = terminal.update, terminal.log, terminal.close
  log("x")
  update(REPORTS[2])
  close()
  assert other.getvalue() == "x\n" + "".join(line + "\n" for line in progress.plain_lines(
      REPORTS[2]))


def test_a_tty_gets_a_live_bar_with_the_eta_counted_down_and_log_lines_above_it(monkeypatch):
  monkeypatch.setenv("TERM", "xterm-256color")
  stream, clock = FakeTTY(), FakeClock()
  terminal = progress.Terminal(stream, width=200, now=clock)
  terminal.update(REPORTS[0])
  assert "ETA unknown yet" in _pieces(stream.getvalue())[-1]
  terminal.update(REPORTS[1])
  bar = _pieces(stream.getvalue())[-1]
  assert "mean: chunk 1/2, round 10/10" in bar
  assert " 16.7% " in bar  # 2/12
  assert "elapsed 13 s  ETA 3 min 20 s" in bar
  assert "━" in bar  # the bar itself
  # Between reports the bar counts on: 50 s later, elapsed + 50 s and the ETA − 50 s.
  clock.t += 50.0
  terminal.log("a line from the engine")
  text = stream.getvalue()
  pieces = _pieces(text)
  assert "a line from the engine" in pieces  # a piece of its own: not mixed into the bar
  assert "elapsed 1 min 03 s  ETA 2 min 30 s" in pieces[-1]
  assert text.index("a line from the engine") > text.index("ETA 3 min 20 s")
  terminal.update(REPORTS[2])
  assert " 50.0% " in _pieces(stream.getvalue())[-1]
  assert "ETA 2 h 02 min" in _pieces(stream.getvalue())[-1]
  # The last report closes the bar: erased, then the plain lines, the "training done" one last.
  before = len(stream.getvalue())
  terminal.update(REPORTS[3])
  tail = stream.getvalue()[before:]
  plain = "".join(line + "\n" for line in progress.plain_lines(REPORTS[3]))
  assert tail.endswith(plain)
  assert tail[:-len(plain)].endswith("\r\x1b[1A\x1b[2K")  # the bar's line erased
  assert plain.splitlines()[-1].startswith("  training done; next: the worst-case search, ")
  terminal.log("writing the tables")
  terminal.close()
  terminal.close()  # idempotent
  assert stream.getvalue().endswith(plain + "writing the tables\n")


def test_a_dumb_terminal_gets_the_plain_lines(monkeypatch):
  monkeypatch.setenv("TERM", "dumb")
  stream = FakeTTY()
  with progress.Terminal(stream) as terminal:
    for p in REPORTS:
      terminal.update(p)
  want = io.StringIO()
  for p in REPORTS:
    reference_progress(p, want)
  assert stream.getvalue() == want.getvalue()


def test_closing_a_tty_bar_early_leaves_the_last_report_or_nothing(monkeypatch):
  monkeypatch.setenv("TERM", "xterm-256color")
  stream = FakeTTY()
  with progress.Terminal(stream, width=200, now=FakeClock()):
    pass  # e.g. a ConfigError before any training: the bar vanishes, no line is left
  assert "starting" in stream.getvalue()
  assert stream.getvalue().endswith("\r\x1b[1A\x1b[2K")  # the bar's line erased, nothing after
  stream = FakeTTY()
  try:
    with progress.Terminal(stream, width=200, now=FakeClock()) as terminal:
      terminal.update(REPORTS[1])
      raise KeyboardInterrupt
  except KeyboardInterrupt:
    pass
  assert stream.getvalue().endswith(progress.plain_lines(REPORTS[1])[0] + "\n")


def test_on_80_columns_the_bar_keeps_one_line_and_cuts_the_spec_first(monkeypatch):
  monkeypatch.setenv("TERM", "xterm-256color")
  stream = FakeTTY()
  with progress.Terminal(stream, width=80, now=FakeClock()) as terminal:
    terminal.update({**REPORTS[3], "elapsed": 359999.0, "eta": 359999.0, "after": None})
    bar = _pieces(stream.getvalue())[-1]
  assert "…: round 10/10" in bar  # one chunk: no chunk shown; the spec cut, not the round
  assert "100.0% elapsed 99 h 59 min  ETA 99 h 59 min" in bar
  assert len(bar.rstrip()) <= 80
