"""fedjax_robust: a vectorized JAX simulator for Byzantine-robust federated learning."""

__version__ = "0.1.0"
