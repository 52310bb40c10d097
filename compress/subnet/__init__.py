"""From a config to a deployable network: extraction, BN recalibration, verified ONNX export."""

from compress.subnet.bn import recalibrate_bn
from compress.subnet.export import ExportReport, export_onnx
from compress.subnet.extract import extract_subnet

__all__ = ["ExportReport", "export_onnx", "extract_subnet", "recalibrate_bn"]
