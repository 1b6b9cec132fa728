"""Distillation of the float EfficientNet-Lite0 teacher into the binary extractor (issue 6)."""
