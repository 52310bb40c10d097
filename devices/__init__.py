"""Devices: how to time a network on a target (onnxruntime CPU, torch, boards via bundles).

This package is empty until the latency work (issue 3) lands.
"""
