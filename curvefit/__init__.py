"""Compute-performance curve fitting (ScaleRL Eq. 1) and forecasting.

Pure numpy/scipy: this package never imports torch, so the CLI stays fast.
"""
