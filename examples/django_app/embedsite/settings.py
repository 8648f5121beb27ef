"""Settings of the example project: only what serving ``/embed`` needs.

The embedbalance part is the ``EMBEDBALANCE`` dict: ``CONFIG``, an
:class:`embedbalance.config.Config` read from the ``EMBEDBALANCE_*`` environment variables
(backends, balancer, retry, hedge, timeouts...; see docs/config.md), and ``OPTIONS``,
the project's own defaults, which the environment overrides.
Settings only *describe* the client; :mod:`embedsite.embedder` builds it, once per process,
on first use.
"""

from __future__ import annotations

import os

from embedbalance import config

#: Two workers started with ``embedbalance-worker --port 8001`` / ``--port 8002``.
DEFAULT_BACKENDS = "http://127.0.0.1:8001,http://127.0.0.1:8002"

EMBEDBALANCE = {
    # Plain, validated data (a wrong variable fails here, naming it); nothing is built.
    "CONFIG": config.from_env(
        environ={**os.environ, "EMBEDBALANCE_BACKENDS": DEFAULT_BACKENDS}
        if not os.environ.get("EMBEDBALANCE_BACKENDS") and not os.environ.get("EMBEDBALANCE_DNS")
        else os.environ
    ),
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
