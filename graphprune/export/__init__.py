"""Deployment of pruned models: ONNX files for ONNX Runtime and TensorRT, and a generation loop over them.

``onnx`` and ``tensorrt`` take a model that ``graphprune.optimize`` changed; the pruning (ranking and
gather nodes) lives inside the exported decoder graph. The ONNX extra is optional:
``pip install graphprune[onnx]``. The functions live in ``onnx_export``, ``tensorrt_export`` and
``trt_parser`` (no module here is named like a function it exports); each exportable family is a class
(``family.ExportFamily``) in its family's folder, ``graphprune/families/<name>/export.py``.
"""

from .manifest import Manifest
from .onnx_export import onnx
from .ort_generator import OrtGenerator
from .tensorrt_export import tensorrt
from .trt_parser import TensorRTSupportError, tensorrt_support
from .validate import ExportValidationError

__all__ = [
    "ExportValidationError",
    "Manifest",
    "OrtGenerator",
    "TensorRTSupportError",
    "onnx",
    "tensorrt",
    "tensorrt_support",
]
