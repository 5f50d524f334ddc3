"""Theory beside experiment: heterogeneity (G, B) of every realized honest set, κ of every
pipeline (published bound, lower bound, measured κ̂), the robust D-GD bounds per draw and their
tightness, and exact answers on convex synthetic tasks."""
