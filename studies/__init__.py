"""studies: the reports and studies built on chipsim and the models (DESIGN §8).

Each module is a command that regenerates a folder of ``reports/``:

- :mod:`studies.accuracy` — the zoo on aged chips (serving path), robustness midpoint, extended
  STE vs gradients through the noise model → ``reports/accuracy/``
- :mod:`studies.fmnist_study` — the Fashion-MNIST models on aged chips with bootstrap intervals,
  CAWS and the robustness midpoint (issue #12; also ``python -m models.report --suite fmnist``)
  → ``reports/fmnist/``
- :mod:`studies.diagnose` — which non-idealities hardware-aware training can compensate →
  ``reports/diagnose/``
- :mod:`studies.recalibration_least_squares` — analog SGD vs residual learning on pulsed
  devices, least squares → ``reports/recalibration/least_squares.md``
- :mod:`studies.recalibration_digits` — on-chip recalibration of the zoo's aged chips →
  ``reports/recalibration/digits.md``
- :mod:`studies.hardening` — QAT vs noisy training vs HWA, skip connections, robustness
  midpoint and aged chip (issue #18; trained by :mod:`studies.hardening_train`) →
  ``reports/hardening/``

:mod:`studies.common` holds what they share (time constants and age schedules, the zoo reader,
Markdown cells, headless plots); :mod:`studies.noise_midpoint` the activation-noise sweep and
logistic midpoint fit with bootstrap that the hardening studies share. The torch library they
use is :mod:`models`; nothing in ``models``, ``chipsim`` or ``service`` imports this package
(except the ``python -m models.report`` alias).
"""
