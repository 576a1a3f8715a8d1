"""Pruning passes: weights set to zero in patterns runtimes can exploit."""
