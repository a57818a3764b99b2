"""agedchip's HTTP service: a thin FastAPI layer over chipsim (DESIGN §5–6).

``service.app.create_app(settings)`` builds the ASGI app; ``python -m service`` runs it with
uvicorn using the ``AGEDCHIP_*`` environment settings (see :mod:`service.settings`). Nothing on
this path imports torch.
"""

__version__ = "0.1.0"
