"""Structural reparameterizations: rewrites that keep the float function and change the graph."""
