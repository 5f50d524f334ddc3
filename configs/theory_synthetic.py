"""Theory beside experiment on a convex task where every constant is exact: how tight are the
robust D-GD bounds in expectation over μ_H, and at the worst-case honest set?

The task: binary logistic regression with ℓ2 (λ = 0.05) on the synthetic source (n = 10 clients,
100 examples each, 20 features, concept shift α = 1, no covariate shift), trained by robust D-GD
exactly as the theorems state it: full-batch gradients, one local step, no momentum, plain server
SGD, step η = 1 ≤ 1/L_S. Per draw: L_S* by Newton, L_S exact (Hessian at θ = 0), μ = λ exact,
(G², B²) of the realized honest set along training, and the μ-PL bound on L_S(θ_T) − L_S*.

For each corruption rate p the server declares f = round(p·n) and μ_H is independent, clustered
or graph-correlated at marginal p (as in configs/sweep_core.py), or the worst case at f: the
honest set maximizing the excess loss L_S(θ_T) − L_S* that the theory plots. The
attack is the line-searched ALIE (`optimal_alie`), the strongest in the library against these
rules. About 5 minutes on 2 CPU cores:

  python launch/sweep.py --config=configs/theory_synthetic.py --workdir=runs/theory_synthetic

Its headline quantity is the one the worst case maximizes, the excess loss L_S(θ_T) − L_S*
(`theory_error`). It prints the usual table of it (E[· | b = f] and E[· | b ≤ f] beside P(b > f),
the unconditioned E[·] apart: the draws with b > f reach 1e12) and the theory table, and writes
expected_vs_worst.png (the expected excess loss at the worst case's b = f against it), the
sweep's other figures of it, theory_vs_experiment.png (a column per rule: the measured expected error vs the
predicted expected bound; at b = f the expected error vs the error and bound at the worst-case
set) and tightness.png (per-draw bound / measured), each with its caption in <figure>.txt.

The same sweep on least squares (ridge, λ = 0.05: the synthetic regression task with the same
α, β, n and dim; a constant Hessian, so L_S = λ_max and μ_S = λ_min are exact per draw, L_S ≈ 1.1
here, hence a step η = 0.5 ≤ 1/L_S instead of 1; the graph μ_H is left out, its data-similarity
graph compares label distributions, which real targets do not have):

  python launch/sweep.py --config=configs/theory_synthetic.py --workdir=runs/theory_least_squares \\
    --config.base.model=linear_regression --config.base.data.synthetic_task=regression \\
    --config.base.training.client_lr=0.5 --config.grid.mu_h=independent,clustered,worst_case

Its accuracies are undefined (n/a), and with b > f the attack drives the quadratic honest loss of
some draws to +inf (float32 overflow), so E[honest loss] is +inf whenever such a draw occurs
(`honest_loss_given_b_le_f` stays finite).
"""

from configs import sweep_core
from fedjax_robust.config import base_config


def base():
  c = base_config()
  c.num_clients = 10
  c.num_samples = 64
  c.attack = "optimal_alie"
  c.model = "logistic"
  c.data.name = "synthetic"
  c.data.synthetic_num_classes = 2
  c.data.synthetic_dim = 20
  c.data.synthetic_examples_per_client = 100
  c.data.synthetic_alpha = 1.0
  c.data.synthetic_beta = 0.0
  c.training.l2 = 0.05
  c.training.batch_size = 0        # full-batch gradients: D-GD
  c.training.local_steps = 1
  c.training.client_momentum = 0.0
  c.training.client_lr = 1.0       # step η = client_lr · server_lr
  c.training.server_lr = 1.0
  c.training.num_rounds = 100
  c.training.eval_every = 5
  # The worst case of what the theory plot and table show: the excess loss L_S(θ_T) − L_S*
  # (L_S* exact here), not the final loss, whose maximum is not the excess loss's.
  c.honest_set_options.worst_case.criterion = "excess_loss"
  return c


def get_config():
  return sweep_core.sweep_config(
      base(), aggregators=("trimmed_mean", "geometric_median", "nnm+trimmed_mean",
                           "bucketing+geometric_median"),
      corruption=(0.1, 0.2, 0.3), metric="theory_error")


# aggregator × corruption p × μ_H with f = round(p·n), exactly as in configs/sweep_core.py.
points = sweep_core.points


def plot_note(c) -> str:
  t = c.base.training
  task = "least squares" if c.base.model == "linear_regression" else "logistic regression"
  return (sweep_core.plot_note(c) + f" Convex task ({task}, ℓ2 λ = {t.l2:g}, exact L, μ, L_S*), "
          f"robust D-GD with step {t.client_lr * t.server_lr:g}.")
