"""Theory beside experiment on digits (a neural network, so L is estimated and the bound is the
non-convex one): robust D-GD (full-batch gradients, one local step, no momentum) of the default
MLP on n = 10 Dirichlet(1) clients, against the line-searched ALIE, for four rules × independent,
clustered and graph-correlated corruption and the worst case at f (the honest set of largest
honest error 1 − accuracy, the quantity of the headline figure).

The bound is on the mean of ‖∇L_S(θ_t)‖² over the last half of the rounds (the theorem run from
θ_T/2), with L the Hessian power-iteration estimate at θ_T and L_S* ≥ 0: an estimate, not a
guarantee (see fedjax_robust/theory/report.py). At this step training has not settled by T/2
(‖∇L_S‖² stays near 0.15 for every rule), so the bound's Byzantine term κG²/(1 − κB²) is
compared with the excess of that mean over the honest-only run's on the same draws. One
corruption level takes about 15 minutes on 2 CPU cores:

  python launch/sweep.py --config=configs/theory_digits.py --workdir=runs/theory_digits \
    --config.grid.corruption=0.2
"""

from configs import default
from configs import sweep_core


def get_config():
  base = default.get_config()
  base.num_clients = 10
  base.num_samples = 32
  base.attack = "optimal_alie"
  base.theory.enabled = True          # off in configs/default.py, whose D-SGD is not D-GD
  base.training.batch_size = 0        # full batch: D-GD
  base.training.client_momentum = 0.0
  # Step η = 0.05 ≤ 1/L̂: the power-iteration estimate of L at θ_T is 2–11 on these draws, so
  # η = 0.5 would void the D-GD premise (step ≤ 1/L) for most draws.
  base.training.client_lr = 0.05
  base.training.num_rounds = 200
  base.training.eval_every = 5
  # The worst case of the headline's quantity: the honest set of lowest final honest accuracy.
  base.honest_set_options.worst_case.criterion = "honest_error"
  return sweep_core.sweep_config(
      base, aggregators=("trimmed_mean", "geometric_median", "nnm+trimmed_mean",
                         "bucketing+geometric_median"),
      corruption=(0.2, 0.3), metric="honest_accuracy")


points = sweep_core.points


def plot_note(c) -> str:
  return sweep_core.plot_note(c) + " Robust D-GD (full batch, no momentum)."
