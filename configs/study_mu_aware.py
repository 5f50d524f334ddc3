"""The study, question 3 (issue 29): where does knowing μ_H pay, and does a rule built for the
expected objective win there? configs/sweep_mu_aware.py's comparison (every rule against the
best classic rule of its setting, tuned on draws of another seed, paired over the same draws of
μ_H) on its `groups` block: the synthetic task (n = 25, 100 examples each, held-out 20%) whose
unreliable clients 0–4 (corrupted with marginal 0.5, the others 0.05; E[b] = 3.5, declared
f = 5) are also a distinct group, their labelling model shifted by 0 (no group), 3 or 6 — so
the heterogeneity of an honest set depends on how many of them it keeps, and the corruption is
concentrated on the distinct clients. Laws: independent and clustered (5 clusters of 5,
q1 = 0.9: the unreliable clients fail together). Attack: ALIE.

Rules: the classic trimmed mean, geometric median and NNM + trimmed mean (f tuned over 3, the
declared 5 and the law's quantile), against the prior's posterior_filter, the trimmed mean at the
prior's quantile f, the geometric median weighted by reliability 1 − p_i, and posterior_trim
(the trimmed mean at the smallest t with posterior P(b > t | x) ≤ 0.05: the expected bound
minimized under a chance constraint, aggregators/prior_aware.py). What a wrong prior costs
(block groups_prior, shift 6): the prior rules under the prior ×2, ×0.5, permuted (on the wrong
clients) and absent. The report (fedjax_robust/report/sweeps/mu_aware.py) prints each rule's
paired difference in held-out honest accuracy from the tuned best classic rule, and from the
classic rule it modifies, with their CIs, in mu_aware_gains.csv and mu_aware_gains.png. About
30 minutes on 2 CPU cores (the 121 points without the reliability-weighted median: about 25 min
here); `--config.grid.p_unreliable=0.5,0.3` adds p = 0.3 (about 25 min more):

  python launch/sweep.py --config=configs/study_mu_aware.py --workdir=runs/study_mu_aware

More rules or laws: --config.grid.rules, --config.grid.mu_h (graph), as in the sweep.
"""

from configs import sweep_mu_aware

RULES = ("trimmed_mean", "geometric_median", "nnm+trimmed_mean", "posterior_filter",
         "trimmed_mean@quantile_f", "posterior_trim", "geometric_median@reliability")


def get_config():
  c = sweep_mu_aware.get_config()
  c.grid.blocks = ("groups", "groups_prior")
  c.grid.mu_h = ("independent", "clustered")
  c.grid.threats = ("alie",)
  c.grid.rules = RULES
  return c


points = sweep_mu_aware.points
plot_note = sweep_mu_aware.plot_note
