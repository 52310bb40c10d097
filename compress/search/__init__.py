"""Searches over the channel space: what they minimise, AutoSlim's greedy slimming, DMS, baselines."""
