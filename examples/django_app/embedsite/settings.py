"""Settings of the example project: only what serving ``/embed`` needs.

The embedbalance part is the ``EMBEDBALANCE`` dict: ``BACKENDS`` (from the
``EMBEDBALANCE_BACKENDS`` environment variable, comma-separated) and ``OPTIONS``, passed
unchanged to :class:`embedbalance.EmbeddingClient` (balancer, retry, hedge, timeout...).
Settings only *describe* the client; :mod:`embedsite.embedder` builds it, once per process,
on first use.
"""

from __future__ import annotations

import os

#: Two workers started with ``embedbalance-worker --port 8001`` / ``--port 8002``.
DEFAULT_BACKENDS = "http://127.0.0.1:8001,http://127.0.0.1:8002"

EMBEDBALANCE = {
    "BACKENDS": [
        url.strip()
        for url in (os.environ.get("EMBEDBALANCE_BACKENDS") or DEFAULT_BACKENDS).split(",")
        if url.strip()
    ],
    "OPTIONS": {
        "truncate": True,  # cut over-long texts instead of failing the request
        "timeout": 30.0,
    },
    #: Texts accepted in one request: a guard against one caller filling every backend.
    "MAX_TEXTS": 256,
}

# A development key; set DJANGO_SECRET_KEY in any real deployment.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "embedbalance-example-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

ROOT_URLCONF = "embedsite.urls"
WSGI_APPLICATION = "embedsite.wsgi.application"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
