"""Triton kernels and their launchers, one module per op. Imported lazily: only when a Triton impl runs."""
