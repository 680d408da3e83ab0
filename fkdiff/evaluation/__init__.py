"""Evaluation: metrics against exact densities and figures."""
