"""WSGI entry point: ``gunicorn --chdir examples/django_app embedsite.wsgi``.

Building the application builds no embedding client, so gunicorn ``--preload`` is safe:
each worker process makes its own on its first request (see :mod:`embedsite.embedder`).
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embedsite.settings")

application = get_wsgi_application()
