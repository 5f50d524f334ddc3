"""Throughput benchmarks: every rule and a few chains over a grid of (n, d), against NumPy
references (and ByzFL when importable); and the Monte Carlo training throughput as S grows."""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "all"            # "aggregators", "monte_carlo", "all" or "scale" (asked alone)
  c.rules = ("mean,coordinate_median,trimmed_mean,meamed,geometric_median,krum,multi_krum,"
             "minimum_diameter_averaging,monna,centered_clipping,bulyan,caf,smea,"
             "nnm+trimmed_mean,bucketing+mean,bucketing+geometric_median,arc+mean,"
             "static_clipping+mean")
  c.grid = ((10, 10_000), (10, 100_000), (10, 1_000_000), (100, 10_000), (100, 100_000),
            (100, 1_000_000), (1000, 10_000), (1000, 100_000))
  c.f_fraction = 0.1        # f = max(1, ⌊f_fraction · n⌋)
  c.batch = 1               # S > 1: aggregate S independent [n, d] inputs under vmap
  c.repeats = 5
  c.max_elements = 2 * 10**8  # skip grid points with n·d·S above this (memory)
  # Options of the timed rules, e.g. ByzFL's iteration counts: geometric_median.maxiter=3.
  c.aggregator_options = ml_collections.ConfigDict({
      "geometric_median": {"maxiter": 100},
      "centered_clipping": {"iterations": 3, "tau": 10.0}})
  # NumPy references (and ByzFL) run where n·d is at most this (they are slow).
  c.reference_max_elements = 10**7
  c.reference_repeats = 2
  # Monte Carlo throughput: the default digits job (configs/default.py) with one rule.
  c.monte_carlo = ml_collections.ConfigDict({
      "spec": "trimmed_mean", "sample_counts": (1, 16, 256, 1024), "num_rounds": 20,
      "baseline_samples": 1,
      # Draws per block (`training.blocked`: lax.map over blocks of vmapped draws); 0: all S
      # at once. Each B below S that divides it is measured beside it.
      "block_sizes": (0,),
      # Device meshes (config.mesh syntax; "" one device): e.g. ("", "draws=2", "draws") with
      # XLA_FLAGS=--xla_force_host_platform_device_count=8 for 1, 2 and 8 simulated devices.
      "meshes": ("",),
      # ByzFL's own federated loop on the same job, when `byzfl` is importable (vs_byzfl), as
      # a pool of this many one-thread processes side by side (0: one per core, the cores our
      # side uses); the ratio is over the pool's rounds per second of wall clock.
      "byzfl": True, "byzfl_processes": 0,
      # Also time the whole launcher job (launch/train.py: configs/default.py with `spec` alone,
      # the largest S, num_rounds rounds, one evaluation, no baseline), start-up to exit.
      "whole_job": False,
      # Also time each phase of a round (local training, attack, rule) alone per S.
      "phases": False,
      # Options of the job's rules, over configs/default.py's (e.g. geometric_median.maxiter=3;
      # ByzFL's loop gets the same iteration count).
      "aggregator_options": {"geometric_median": {"maxiter": 100}}})
  # Scaling (mode "scale", issue 37): sample-rounds/s and peak memory against d (the points), n
  # and S, the plan's bytes beside the measured peak (fedjax_robust/scaling.py). d: 2.4k, 77k,
  # 4.3M (MLP), 137k, 545k (CNN at CIFAR shape), 0.1M (transformer).
  c.scale = ml_collections.ConfigDict({
      "points": ("mlp:32", "mlp:1024", "mlp:2048x2048", "cnn:16x32", "cnn:32x64",
                 "char_transformer:2x64"),
      "clients": (25, 100, 400), "samples": (8, 64), "num_rounds": 5, "spec": "trimmed_mean",
      "memory_budget_gb": 16.0})
  return c
