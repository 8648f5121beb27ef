"""Routes: ``POST /embed``, ``GET /stats``, ``GET /metrics``."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("embed", views.embed, name="embed"),
    path("stats", views.stats, name="stats"),
    path("metrics", views.metrics, name="metrics"),
]
