"""The launcher's progress on a terminal: a live bar with the whole job's ETA when the output is a
TTY, the plain lines (one per evaluation step) in logs and CI.

`experiment.run` reports after every evaluation step of every training (`experiment._JobClock`):
a dict with the spec, chunk / num_chunks, round / num_rounds, the share of the job's trainings
done (`fraction`), `elapsed` and `eta` in seconds (eta None: unknown until a step that did not
compile), and `after` (on the last step: what the job still does). `Terminal(stream)` turns it
into output:

- not a TTY (`stream.isatty()` false: a log file, CI; or TERM=dumb): exactly `plain_lines`, the
  launcher's lines of before (byte-identical), flushed at once; `log(msg)` prints msg as a line.
- a TTY: a `rich` live bar on one line (spec, chunk when the run has several, round, the share
  done, elapsed time and ETA, both counted on from the last report between steps, and a spinner
  that shows the job alive through a long compilation; a long spec is cut with an ellipsis).
  `log(msg)` prints msg above the bar (rich erases and redraws the live region around it, so it
  never garbles); when the output is the process's stdout, stray prints to stdout (and to stderr
  when that is a TTY too) are routed above the bar as well. The bar is transient: when the last
  step reports `after`, or at `close()` (an error or Ctrl-C included), it is erased and the last
  report's plain lines are printed in its place, so the scrollback keeps the record a log has.

rich rather than tqdm: rich redraws on its own thread, so the spinner, the elapsed time and the ETA
move while one step (or the first step's compilation, minutes on a large job) runs; tqdm redraws
only on an update. And rich routes other writes to stdout above the bar, where tqdm needs every
caller to use `tqdm.write`.

Use (the launcher):

    with progress.Terminal() as terminal:
      exp = experiment.run(config, progress=terminal.update, log=terminal.log, ...)
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Mapping, TextIO

from fedjax_robust import experiment

UNKNOWN_ETA = "after the next step (this one compiled)"
_BAR = 10  # the bar's columns
_CLOCK = len("elapsed 99 h 59 min  ETA unknown yet")  # the elapsed time and ETA's columns


def plain_lines(p: Mapping[str, Any]) -> list[str]:
  """The plain lines of one report (without newlines): the share of the job's trainings done
  (every aggregator's, then the honest-only baseline's) and the ETA of the trainings left, which a
  step that compiled cannot give; after the last step, what the job still does."""
  eta = UNKNOWN_ETA if p["eta"] is None else experiment.human_seconds(p["eta"])
  lines = [f"  [{100 * p['fraction']:5.1f}% of the training] {p['spec']}: chunk {p['chunk']}/"
           f"{p['num_chunks']}, round {p['round']}/{p['num_rounds']}  elapsed "
           f"{experiment.human_seconds(p['elapsed'])}  ETA {eta}"]
  if p["after"] is not None:
    lines.append("  training done; next: " + ", ".join(
        tuple(p["after"]) + ("writing the tables and files",)) + " (not in the ETA)")
  return lines


class Terminal:
  """The progress callback (`update`) and log (`log`) of one job on `stream` (default: the
  process's stdout at construction); a context manager whose exit calls `close`."""

  def __init__(self, stream: TextIO | None = None, *, width: int | None = None,
               now: Callable[[], float] = time.monotonic):
    """`width`: the bar's columns (None: the terminal's); `now`: the clock the bar counts elapsed
    time and the ETA on between reports (a fake one in the tests)."""
    self.stream = sys.stdout if stream is None else stream
    # A TTY that cannot move its cursor (TERM=dumb, e.g. an editor's shell) gets the plain lines.
    self.live = (bool(getattr(self.stream, "isatty", lambda: False)())
                 and os.environ.get("TERM", "").lower() not in ("dumb", "unknown"))
    self._width = width
    self._now = now
    self._last: Mapping[str, Any] | None = None
    self._bar = None
    self._task = None
    if self.live:
      from rich.console import Console  # pylint: disable=g-import-not-at-top
      self._console = Console(file=self.stream, force_terminal=True, width=width,
                              highlight=False, markup=False, emoji=False)
      self._start()

  # -- the bar -----------------------------------------------------------------------------------

  def _start(self) -> None:
    from rich import progress as rp  # pylint: disable=g-import-not-at-top
    from rich.table import Column  # pylint: disable=g-import-not-at-top
    from rich.text import Text  # pylint: disable=g-import-not-at-top
    now = self._now

    class Clock(rp.ProgressColumn):
      """elapsed and ETA, counted on from the last report."""

      def render(self, task):
        f = task.fields
        if f.get("stamp") is None:
          return Text("")
        since = max(now() - f["stamp"], 0.0)
        eta = ("unknown yet" if f["eta"] is None
               else experiment.human_seconds(max(f["eta"] - since, 0.0)))
        return Text(f"elapsed {experiment.human_seconds(f['elapsed'] + since)}  ETA {eta}")

    on_stdout = self.stream is sys.stdout
    # One line, the description (spec, chunk, round) cut to what the other columns leave
    # (`_describe`), never the share done, the elapsed time or the ETA.
    self._bar = rp.Progress(
        rp.SpinnerColumn(), rp.TextColumn("{task.description}", markup=False),
        rp.BarColumn(bar_width=_BAR), rp.TextColumn("{task.percentage:5.1f}%", markup=False),
        Clock(table_column=Column(no_wrap=True, min_width=_CLOCK)),
        console=self._console, transient=True, refresh_per_second=4,
        redirect_stdout=on_stdout,
        redirect_stderr=on_stdout and bool(getattr(sys.stderr, "isatty", lambda: False)()))
    self._task = self._bar.add_task("starting", total=1.0,
                                    stamp=None, elapsed=0.0, eta=None)
    self._bar.start()

  def _describe(self, spec: str, where: str) -> str:
    """spec + where, cut with an ellipsis to the width the bar's other columns leave (at least
    12): the spec first (down to 5 characters), then the end."""
    room = max(self._console.width - (1 + _BAR + len("100.0%") + _CLOCK + 5), 12)
    if len(spec) + len(where) > room and room - len(where) >= 6:
      spec = spec[:room - len(where) - 1] + "…"
    text = spec + where
    return text if len(text) <= room else text[:room - 1] + "…"

  def _stop(self) -> None:
    """Erases the bar and prints the last report's plain lines in its place."""
    if self._bar is None:
      return
    bar, self._bar = self._bar, None
    bar.stop()
    if self._last is not None:
      self._write(plain_lines(self._last))

  def _write(self, lines: list[str]) -> None:
    for line in lines:
      if self.live:
        self._console.out(line, highlight=False)
      else:
        print(line, file=self.stream, flush=True)

  # -- the API -----------------------------------------------------------------------------------

  def update(self, p: Mapping[str, Any]) -> None:
    """`experiment.run`'s progress callback: one report (the module docstring's dict)."""
    self._last = dict(p)
    if not self.live:
      self._write(plain_lines(p))
      return
    if self._bar is None:  # a report after the bar closed: a new bar
      self._start()
    self._bar.update(self._task, completed=float(p["fraction"]),
                     description=self._describe(p["spec"], (
                         f": chunk {p['chunk']}/{p['num_chunks']}," if p["num_chunks"] > 1
                         else ":") + f" round {p['round']}/{p['num_rounds']}"),
                     stamp=self._now(), elapsed=float(p["elapsed"]), eta=p["eta"], refresh=True)
    if p["after"] is not None:
      self._stop()

  def log(self, msg: str) -> None:
    """Prints `msg` as its own line: above the bar when one is live (then redrawn at once)."""
    self._write([str(msg)])
    if self._bar is not None:
      self._bar.refresh()

  def close(self) -> None:
    """Erases a live bar and prints the last report's plain lines (idempotent)."""
    if self.live:
      self._stop()

  def __enter__(self) -> Terminal:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

