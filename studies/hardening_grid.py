"""The hardening study's grid (issue #18): its architectures and training arms, in the page's order.
One definition for the trainer (:mod:`studies.hardening_train`), the run finder
(:mod:`studies.hardening`) and the page (:mod:`studies.hardening_report`)."""

from __future__ import annotations

#: The ResNet and its no-skip twin (same layers, parameters and activation shapes).
ARCHS = ("resnet", "resnet-noskip")
#: The arms (``models.train_fmnist --mode``); ``plain`` first, it is the teacher of ``hwa``.
MODES = ("plain", "qat-constant", "qat-dynamic", "noisy", "noisy-then-qat", "hwa")
