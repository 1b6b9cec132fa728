"""Distillation of the float EfficientNet-Lite0 teacher into the binary extractor.

The method, the commands and the measured results: docs/distillation.md.
"""
