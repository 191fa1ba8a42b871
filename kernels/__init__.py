"""Triton kernels and their launchers, installed as `massact.kernels`.

Importing this package does not import Triton; the launchers do, on first use.
"""
