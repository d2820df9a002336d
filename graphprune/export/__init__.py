"""Exporters of pruned graphs (ONNX Runtime, TensorRT): see the export issue; nothing here yet."""
