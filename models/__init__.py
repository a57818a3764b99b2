"""models: hardware-aware training (torch), the model zoo (ONNX), and the accuracy-vs-age report.

DESIGN.md §7–8. The device and periphery formulas come from :mod:`chipsim` (written once as
array functions, run here on torch tensors); evaluation runs the exported ONNX on the chipsim
runtime, the serving path.
"""
