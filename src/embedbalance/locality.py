"""Locality: keep traffic in the caller's zone while that zone can carry it.

Why: replicas spread over zones (or regions) are cheaper and faster to reach from
their own zone — a cross-zone call adds latency and, on most clouds, a per-byte
charge. But sending *everything* local stops being right once the local replicas are
failing or full: then the shortfall must spill to other zones, in proportion, and come
back as the local zone recovers.

The rule is Envoy's, in the form it uses for priority levels and locality weights
(``overprovisioning``, default 1.4): the local zone's *availability* is
``min(1, overprovisioning × available / total)`` of its capacity, where ``available``
is the (slow-start) weight of its usable, unsaturated backends and ``total`` the weight
of all of its members. The local zone takes that share of traffic and the rest spills
to the other zones together; with the default, traffic stays wholly local until fewer
than ~71% of the local capacity is available. Unlike Envoy's zone-aware routing it
does not need to know how the *callers* are spread over zones — each caller only
states its own.

Zone preference is applied *within* a priority tier: :class:`~embedbalance.GpuPriority`
first picks a tier over all zones (a remote GPU beats a local CPU), then the zone
within it. Time enters only through the weights: a zone coming back is readmitted
with slow start, so its share ramps up with its backends' effective weight rather
than jumping back at once.

Pure: floats and an injected ``random.Random`` in, a decision out.
"""

from __future__ import annotations

import math
import random

import attrs

__all__ = ["Locality", "local_share", "prefer_local"]


def _positive_or_none(_: object, attribute: attrs.Attribute[float | None], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{attribute.name} must be a number > 0 or None, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number > 0 or None, got {value!r}")


def _check_zone(_: object, __: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"zone must be a non-empty string, got {value!r}")


def _check_overprovisioning(_: object, __: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"overprovisioning must be a number >= 1, got {value!r}")
    if not (1.0 <= value < math.inf):
        raise ValueError(f"overprovisioning must be a finite number >= 1, got {value!r}")


@attrs.frozen
class Locality:
    """The caller's zone and when to leave it.

    - ``zone``: the caller's own zone; backends with the same ``Backend.zone`` are local.
    - ``overprovisioning``: how much headroom the local zone is assumed to have (Envoy's
      factor, 1.4): spilling starts when less than ``1/overprovisioning`` of its weight
      is available. ``1`` spills as soon as any local capacity is missing.
    - ``saturation``: a local backend with ``pending >= saturation × weight`` requests
      in flight counts as unavailable (``None``: only health and overload answers count).
    - ``knee``: a backend whose outstanding work reaches ``knee ×`` its learned
      concurrency (for balancers that learn one, like the default) counts as
      unavailable (``None``: not used). ``1.0`` spills once every local slot is busy.
    """

    zone: str = attrs.field(validator=_check_zone)
    overprovisioning: float = attrs.field(default=1.4, validator=_check_overprovisioning)
    saturation: float | None = attrs.field(default=None, validator=_positive_or_none)
    knee: float | None = attrs.field(default=None, validator=_positive_or_none)

    @classmethod
    def coerce(cls, value: Locality | str | None) -> Locality | None:
        """A :class:`Locality` from a zone name (``None`` stays ``None``: no preference)."""
        if value is None or isinstance(value, Locality):
            return value
        if isinstance(value, str):
            return cls(value)
        raise TypeError(f"zone must be a zone name or a Locality, got {type(value).__name__}")


def local_share(
    local_available: float,
    local_total: float,
    remote_available: float,
    overprovisioning: float = 1.4,
) -> float:
    """Share of traffic (0..1) the local zone should take.

    ``local_available``: weight of the local backends that may take a request now;
    ``local_total``: weight of all local members, healthy or not; ``remote_available``:
    weight of the other zones' available backends. The local zone keeps
    ``min(1, overprovisioning × available / total)``; when nothing elsewhere is
    available it keeps everything (a busy local backend beats none at all).
    """
    if remote_available <= 0:
        return 1.0
    if local_total <= 0 or local_available <= 0:
        return 0.0
    return min(1.0, overprovisioning * local_available / local_total)


def prefer_local(share: float, rng: random.Random) -> bool:
    """Whether this request stays local, drawn with probability ``share``."""
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    return rng.random() < share
