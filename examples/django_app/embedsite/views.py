"""JSON views over the process's shared client (sync views: Django runs each request in
a thread, and the sync client is thread-safe)."""

from __future__ import annotations

import json
from typing import Any

import attrs
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from embedbalance import AllAttemptsFailed, EmbedbalanceError, NoBackendAvailable

from . import embedder


def _parse_texts(body: bytes) -> list[str] | str:
    """The texts of a request body, or an error message."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("texts"), list):
        return 'expected a JSON object {"texts": ["...", ...]}'
    texts: list[Any] = payload["texts"]
    limit = settings.EMBEDBALANCE.get("MAX_TEXTS", 256)
    if not texts or len(texts) > limit:
        return f"send between 1 and {limit} texts"
    if not all(isinstance(t, str) and t for t in texts):
        return "every text must be a non-empty string"
    return texts


# A JSON API for other services: no cookies or sessions, so nothing for CSRF to protect;
# exempt so that the view keeps working in a project that enables CsrfViewMiddleware.
@csrf_exempt
@require_POST
def embed(request: HttpRequest) -> JsonResponse:
    """Embed the posted texts; backend trouble becomes a 503 or 502 so that callers can
    tell it from their own mistakes (400)."""
    texts = _parse_texts(request.body)
    if isinstance(texts, str):
        return JsonResponse({"error": texts}, status=400)
    try:
        rows = embedder.get().client.embed(texts)
    except (NoBackendAvailable, AllAttemptsFailed) as exc:
        return JsonResponse({"error": f"no embedding backend could answer: {exc}"}, status=503)
    except EmbedbalanceError as exc:
        return JsonResponse({"error": str(exc)}, status=502)
    return JsonResponse({"embeddings": rows.tolist(), "dimension": int(rows.shape[1])})


@require_GET
def stats(request: HttpRequest) -> JsonResponse:
    """The transport's snapshot as JSON: cheap, needs no Prometheus."""
    return JsonResponse(attrs.asdict(embedder.get().client.stats()))


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of this process's registry (one per worker process)."""
    return HttpResponse(generate_latest(embedder.get().registry), content_type=CONTENT_TYPE_LATEST)
