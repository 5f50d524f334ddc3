"""The scaling benchmark (`scaling`, `launch/bench.py --config.mode=scale`) at a tiny size."""

import pytest

from fedjax_robust import scaling
from fedjax_robust.errors import ConfigError


def test_points_parse_to_model_options_and_bad_points_are_named():
  assert scaling.parse_point("mlp:1024x512") == ("mlp", {"model_options.mlp.hidden": (1024, 512)})
  assert scaling.parse_point("cnn:32x64") == ("cnn", {"model_options.cnn.features": (32, 64)})
  assert scaling.parse_point("char_transformer:2x64") == (
      "char_transformer", {"model_options.char_transformer.layers": 2,
                           "model_options.char_transformer.width": 64})
  assert scaling.parse_point("mlp") == ("mlp", {})
  for bad in ("resnet:50", "mlp:0", "mlp:abc", "char_transformer:64"):
    with pytest.raises(ConfigError, match=f"scale.points: '{bad}'"):
      scaling.parse_point(bad)


def test_a_tiny_scale_run_reports_its_rates_and_its_plan_beside_the_peak():
  rows = scaling.scale(("mlp:16",), (4, 8), (8,), rounds=2, spec="trimmed_mean",
                       budget_gb=4.0, log=lambda _: None)
  assert [(r.n, r.S) for r in rows] == [(4, 8), (8, 8)]
  for r in rows:
    assert r.d == 64 * 16 + 16 + 16 * 10 + 10  # digits 8×8 -> 16 -> 10 classes
    assert r.sample_rounds_per_s == pytest.approx(r.S * r.rounds / r.run_s)
    assert r.peak_over_plan == pytest.approx(r.peak_mb / r.predicted_mb)
    assert r.per_draw_mb * 2**20 >= 4 * r.d * (1 + r.n)  # θ and n momentum rows at least
  assert rows[1].per_draw_mb > rows[0].per_draw_mb  # more clients, more bytes a draw
