"""Distributions for tests and tutorials."""
