"""DMS (differentiable model scaling): differentiable top-k over channels and residual blocks."""
