"""Aggregator throughput benchmark: every rule and a few chains over a grid of (n, d)."""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.rules = ("mean,coordinate_median,trimmed_mean,meamed,geometric_median,krum,multi_krum,"
             "minimum_diameter_averaging,monna,centered_clipping,bulyan,caf,smea,"
             "nnm+trimmed_mean,bucketing+geometric_median,arc+mean,static_clipping+mean")
  c.grid = ((10, 10_000), (10, 100_000), (10, 1_000_000), (100, 10_000), (100, 100_000),
            (100, 1_000_000), (1000, 10_000), (1000, 100_000))
  c.f_fraction = 0.1        # f = max(1, ⌊f_fraction · n⌋)
  c.batch = 1               # S > 1: aggregate S independent [n, d] inputs under vmap
  c.repeats = 5
  c.max_elements = 2 * 10**8  # skip grid points with n·d·S above this (memory)
  return c
