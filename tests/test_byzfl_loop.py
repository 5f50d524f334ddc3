"""The ByzFL pool's arithmetic and concurrency, with cheap stand-in rounds (byzfl itself is not
importable in the default test environment): P spawned processes really run, together, and the
pool's rate is every timed round over the common wall-clock window."""

import os
import time

import pytest

from fedjax_robust import byzfl_loop


def _sleeping_round(xs, ys, honest, *, delay):
  """A stand-in for `byzfl_loop.prepare_round` (module level: spawn pickles it by name): each
  round sleeps `delay` seconds, so a process runs 1/delay rounds/s whatever the load, and P of
  them side by side run P/delay together only if they really overlap."""
  assert (xs, ys, honest) == ("xs", "ys", "honest")  # the job reaches every process
  return (lambda: time.sleep(delay)), (lambda: None)


def _failing_round(xs, ys, honest):
  raise ValueError("no such aggregator")


def test_the_pool_runs_p_processes_together_and_counts_every_round_over_the_window():
  rate = byzfl_loop.pool_rounds_per_second("xs", "ys", "honest", processes=3, num_rounds=10,
                                           warmup_rounds=1, prepare=_sleeping_round, delay=0.05)
  assert rate.processes == 3 and rate.rounds == 10
  assert len(set(rate.pids)) == 3 and os.getpid() not in rate.pids
  # Each process alone: 10 rounds of 50 ms, 20 rounds/s (sleep overshoots a little, never less).
  for r in rate.per_process:
    assert 14.0 < r <= 20.0
  assert rate.sum_of_rates == pytest.approx(sum(rate.per_process))
  # Wall clock: 3 · 10 rounds over the window from the first start to the last end ...
  assert rate.rounds_per_s == pytest.approx(3 * 10 / rate.window_s)
  assert rate.rounds_per_s <= rate.sum_of_rates * (1 + 1e-12)
  # ... and the window is one process's 0.5 s, not three in a row (1.5 s): they overlapped.
  assert 0.5 <= rate.window_s < 0.8
  assert rate.rounds_per_s > 3 * 20.0 / 1.6


def test_a_failing_process_is_reported_with_its_cause_and_nothing_hangs():
  start = time.monotonic()
  with pytest.raises(RuntimeError, match="(?s)pool processes failed.*ValueError: no such agg"):
    byzfl_loop.pool_rounds_per_second(None, None, None, processes=2, prepare=_failing_round,
                                      timeout_s=60)
  assert time.monotonic() - start < 60
