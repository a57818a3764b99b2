"""models: the torch library — hardware-aware training, export to ONNX, the zoo's architectures and data.

DESIGN.md §7. The device and periphery formulas come from :mod:`chipsim` (written once as
array functions, run here on torch tensors by :mod:`models.torch_chip`). The reports and studies
built on this library are the :mod:`studies` package; nothing here imports it (except the
``python -m models.report`` alias of ``python -m studies.accuracy``).
"""
