"""What a config costs in FLOPs: fvcore's count of a module, and the analytic count of any config."""

from compress.cost.flops import FlopReport, FlopsModel, count_flops

__all__ = ["FlopReport", "FlopsModel", "count_flops"]
