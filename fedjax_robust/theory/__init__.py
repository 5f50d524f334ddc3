"""Theory beside experiment: heterogeneity (G, B) of every realized honest set at every round, κ of
every pipeline (published bound, lower bound) and the attack's measured (f, κ) ratio, the robust
D-GD bounds per draw with their Byzantine terms and tightness, and exact answers on convex
synthetic tasks."""
