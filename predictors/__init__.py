"""Latency predictors: per-kernel lookup tables profiled on a device and fitted regressors.

This package is empty until the latency work (issue 3) lands; nothing here
pretends to predict anything yet.
"""
