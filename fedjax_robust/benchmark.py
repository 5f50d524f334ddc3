"""Aggregator throughput: compile and run times per rule over a grid of (n, d), against the
machine's measured memory bandwidth."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust import aggregators


def _block(x):
  return jax.block_until_ready(x)


def time_call(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` over `repeats` calls (each waits for the device)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    _block(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def memory_bandwidth(num_bytes: int = 400 * 2**20, repeats: int = 5) -> float:
  """Read bandwidth in GB/s: a matrix-vector product streaming a 400 MiB array, measured with
  XLA itself. (A copy is the wrong yardstick here: writing a fresh output buffer each call is
  dominated by first-touch page faults, measured at 6.2 GB/s counting read + write on this
  2-core machine, while rules only read their input.)"""
  x = jnp.ones((64, num_bytes // 4 // 64), jnp.float32)
  read = jax.jit(lambda a: jnp.ones((64,), jnp.float32) @ a)
  _block(read(x))
  seconds = time_call(lambda: read(x), repeats)
  return num_bytes / seconds / 1e9


@dataclasses.dataclass
class Row:
  rule: str
  n: int
  d: int
  f: int
  batch: int               # S: samples aggregated at once under vmap (1: unbatched)
  compile_s: float
  median_s: float
  updates_per_s: float     # client updates aggregated per second (n·S / time)
  input_gb_per_s: float    # bytes of the input read once, per second
  bandwidth_fraction: float
  note: str = ""


def bench_rule(spec: str, n: int, d: int, f: int, *, batch: int, repeats: int,
               bandwidth: float, options=None, seed: int = 0) -> Row:
  """Times `spec` on random `[n, d]` inputs (or `[batch, n, d]` under vmap)."""
  rule = aggregators.get(spec, f=f, options=options)
  shape = (n, d) if batch == 1 else (batch, n, d)
  x = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
  key = jax.random.key(1)
  state = rule.init(d)

  def one(u):
    return rule.apply(u, state, key)[0]

  fn = jax.jit(one if batch == 1 else jax.vmap(one))
  start = time.perf_counter()
  compiled = fn.lower(x).compile()
  compile_s = time.perf_counter() - start
  _block(compiled(x))
  seconds = time_call(lambda: compiled(x), repeats)
  gbps = x.size * 4 / seconds / 1e9
  return Row(spec, n, d, f, batch, compile_s, seconds, n * batch / seconds, gbps,
             gbps / bandwidth)


def skip_reason(spec: str, n: int, f: int, max_elements: int, d: int, batch: int,
                max_subsets: int = 100_000) -> str:
  """Why a grid point is not run ('' when it is)."""
  if n * d * batch > max_elements:
    return f"n·d·S = {n * d * batch:.2g} > max_elements"
  stages = aggregators.split_spec(spec)
  if stages[-1] in ("minimum_diameter_averaging", "smea") and math.comb(n, f) > max_subsets:
    return f"C({n},{f}) = {math.comb(n, f):.2g} subsets"
  return ""


def run_grid(specs: Sequence[str], grid: Sequence[tuple[int, int]], *, f_fraction: float,
             batch: int, repeats: int, max_elements: int,
             log: Callable[[str], None] = print) -> tuple[float, list[Row]]:
  bandwidth = memory_bandwidth()
  log(f"measured read bandwidth: {bandwidth:.1f} GB/s")
  rows = []
  for n, d in grid:
    f = max(1, int(f_fraction * n))
    for spec in specs:
      # Bulyan needs n >= 4f + 3: use the largest f it allows when the grid's f is too big.
      f_rule = min(f, (n - 3) // 4) if aggregators.split_spec(spec)[-1] == "bulyan" else f
      reason = skip_reason(spec, n, f_rule, max_elements, d, batch)
      if reason:
        rows.append(Row(spec, n, d, f_rule, batch, math.nan, math.nan, math.nan, math.nan,
                        math.nan, note=f"skipped: {reason}"))
        log(f"  {spec:<32} n={n:<5} d={d:<8} skipped ({reason})")
        continue
      row = bench_rule(spec, n, d, f_rule, batch=batch, repeats=repeats, bandwidth=bandwidth)
      rows.append(row)
      log(f"  {spec:<32} n={n:<5} d={d:<8} f={f_rule:<4} {row.median_s * 1e3:10.2f} ms  "
          f"(compile {row.compile_s:.1f} s)  {row.input_gb_per_s:6.2f} GB/s")
  return bandwidth, rows


def format_table(rows: Sequence[Row]) -> str:
  header = (f"{'rule':<34} {'n':>5} {'d':>8} {'f':>4} {'S':>4} {'time ms':>10} "
            f"{'compile s':>9} {'updates/s':>11} {'GB/s':>7} {'of bw':>6}  note")
  lines = [header, "-" * len(header)]
  for r in rows:
    lines.append(f"{r.rule:<34} {r.n:>5} {r.d:>8} {r.f:>4} {r.batch:>4} "
                 f"{r.median_s * 1e3:>10.2f} {r.compile_s:>9.1f} {r.updates_per_s:>11.3g} "
                 f"{r.input_gb_per_s:>7.2f} {100 * r.bandwidth_fraction:>5.1f}%  {r.note}")
  return "\n".join(lines)


def write_csv(rows: Sequence[Row], path: str) -> None:
  import csv  # pylint: disable=g-import-not-at-top
  fields = [f.name for f in dataclasses.fields(Row)]
  with open(path, "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields)
    writer.writeheader()
    for r in rows:
      writer.writerow(dataclasses.asdict(r))
