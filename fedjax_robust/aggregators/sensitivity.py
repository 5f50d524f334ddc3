"""The L2 sensitivity of a robust rule to one client, for central DP (privacy kind "central").

Under central DP the trusted server clips every row it receives to L2 norm C, so the rule's rows
lie in the ball B(0, C), runs the rule F and adds Gaussian noise of std σ·Δ once, where

    Δ = sup ‖F(X) − F(X')‖₂ over row sets X, X' in B(0, C) differing in one client's row

(replace-one adjacency over the round's m rows; m fixed: every client, or m sampled without
replacement). Δ is returned in units of C:

- `mean`: 2/m (one row moves by at most 2C, with weight 1/m). Under Poisson client sampling
  (add/remove adjacency, a random number of rows) the mean is DP-FedAvg's estimator with the
  fixed denominator E[m] = q·n (McMahan et al., ICLR 2018): Δ = C/E[m].
- `trimmed_mean` (f): 2/(m − 2f). Derived here: per coordinate, the sum of the middle m − 2f
  order statistics is S = T_{m−f} − T_f, T_k the sum of the k largest values. As a function of
  one value x_i, each T_k is continuous and piecewise linear with slope 1 while x_i is among the
  k largest and 0 otherwise; x_i among the f largest is among the m − f largest, so S has slopes
  in {0, 1} and |S(x) − S(x')| ≤ |x_i − x'_i|. Over the coordinates,
  ‖F(X) − F(X')‖₂ ≤ ‖x_i − x'_i‖₂/(m − 2f) ≤ 2C/(m − 2f).
- `coordinate_median`: the trimmed mean with f = (m − 1)/2 for odd m (Δ = 2C) and, for even m,
  the mean of the two middle values, f = m/2 − 1 (Δ = C).
- rules whose output is a convex combination of their rows (`krum`, `multi_krum`,
  `geometric_median` — Weiszfeld's iterates are weighted means of the rows, from their mean —,
  `rfa_one_step`, `minimum_diameter_averaging`, `monna`), alone or after pre-aggregators that
  map the rows into their convex hull (`nearest_neighbor_mixing`, `bucketing`): the output lies
  in B(0, C), so Δ ≤ 2C, its diameter. This bound also holds under add/remove adjacency
  (Poisson sampling); the trimmed mean and the median are refused there (their band moves
  with the realized count).

What Δ assumes: DP's adjacency changes one client's data with every other input fixed, the
Byzantine rows included. An omniscient attack (ALIE, IPM, the adaptive ones) builds its rows from
the honest updates, so changing client i's data also moves the b Byzantine rows: for the mean and
the trimmed mean the aggregate can then move by up to (1 + b)·2C/m, resp. (1 + b)·2C/(m − 2f)
(a hull rule's 2C still holds: its output stays in the ball). Such an attacker has read the honest
updates already; the ε reported is the guarantee with its rows held fixed, and the log says so.

Every other rule (and chain) is refused with the reason: its output is not confined to the
clipped rows' hull and no bound on its sensitivity is derived here (the coordinate-wise rules
after a mixing stage, centered clipping, FLTrust, the spectral and clustering rules, ...).
The noise a hull rule needs is thus 2C against the mean's 2C/m, m times the mean's noise std;
the trimmed mean needs m/(m − 2f) times it (BUILD.md, "Privacy as deployed", measures what that
costs in accuracy).
"""

from __future__ import annotations

from fedjax_robust.aggregators import registry
from fedjax_robust.errors import ConfigError

# Rules (and pre-aggregators) whose output lies in the convex hull of their input rows.
HULL_RULES = ("mean", "krum", "multi_krum", "geometric_median", "rfa_one_step",
              "minimum_diameter_averaging", "monna")
HULL_PRE = ("nearest_neighbor_mixing", "bucketing")


def central_sensitivity(spec: str, *, rows: int, f: int, poisson: bool = False
                        ) -> tuple[float, str]:
  """(Δ/C, how it was obtained) for the rule `spec` on `rows` = m rows clipped to norm C with
  the declared `f` (module doc); ConfigError naming the rule and why when none is derived.
  `poisson`: Poisson client sampling, m the expected count, add/remove adjacency."""
  stages = registry.split_spec(spec)
  rule, pre = stages[-1], stages[:-1]
  if not pre and rule == "mean":
    if poisson:
      return 1.0 / rows, (f"mean with the fixed denominator E[m] = {rows}: C/E[m] "
                          "(add/remove)")
    return 2.0 / rows, f"mean: 2C/m, m = {rows}"
  if poisson and not pre and rule in ("trimmed_mean", "coordinate_median"):
    raise ConfigError(
        f"privacy.kind='central' with training.client_sampling='poisson' and aggregator "
        f"{spec!r}: the realized number of clients moves the trimmed band, and no add/remove "
        "bound on its sensitivity is derived here; allowed: client_sampling='fixed' with it, or "
        f"the mean or the hull rules ({', '.join(HULL_RULES)}) under Poisson sampling.")
  if not pre and rule == "trimmed_mean":
    if rows <= 2 * f:
      raise ConfigError(f"privacy.kind='central': trimmed_mean needs m = {rows} > 2f = {2 * f}.")
    return 2.0 / (rows - 2 * f), f"trimmed mean: 2C/(m − 2f), m = {rows}, f = {f} (derived)"
  if not pre and rule == "coordinate_median":
    return (2.0, f"median of odd m = {rows}: 2C") if rows % 2 else (
        1.0, f"median of even m = {rows}: C (the mean of the two middle values)")
  if rule in HULL_RULES and all(p in HULL_PRE for p in pre):
    return 2.0, f"{spec}: output in the clipped rows' convex hull, 2C (the ball's diameter)"
  bad = [s for s in stages if s not in HULL_RULES + HULL_PRE + ("trimmed_mean",
                                                                  "coordinate_median")]
  why = (f"{', '.join(bad)} may leave the clipped rows' convex hull" if bad else
         "a coordinate-wise rule after a pre-aggregator mixes one client's row into many")
  raise ConfigError(
      f"privacy.kind='central' with aggregator {spec!r}: no bound on its L2 sensitivity to one "
      f"client is derived ({why}); central DP supports mean, trimmed_mean, coordinate_median and "
      f"the hull rules {', '.join(HULL_RULES)} (after {', '.join(HULL_PRE)} or alone). Use "
      "privacy.kind 'client' or 'distributed' for this rule.")
