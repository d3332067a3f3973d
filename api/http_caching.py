"""HTTP caching headers of lookup answers (docs/http-caching.md, the freshness contract).

An answer never changes within a dataset version, so the ``ETag`` is the version and the id:
an edge revalidating after a switch gets the new answer, before it a ``304``. What bounds the
staleness an edge, CDN or browser adds is ``max-age`` alone (a switch or rollback is not
announced to them), hence a short default. Negative answers get a shorter lifetime than
found ones (a new file may add the id), store outages (503) are never stored, and
``stale-if-error`` lets an edge keep serving the last good answers through an outage only
when configured.

The answer depends on the path alone (one media type, never compressed by the API, no
credentials on lookups), so no ``Vary`` is sent: each one would split an edge's entries.

Header values are built once per process as bytes: the hit path sends them as raw ASGI
headers (``api.fast_lookup``), the route as a ``Response``'s headers.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.settings import Settings

Header = tuple[bytes, bytes]

NO_STORE: Header = (b"cache-control", b"no-store")


def _cache_control(max_age: int, stale_if_error: int) -> Header:
    value = f"public, max-age={max_age}"
    if stale_if_error:
        value += f", stale-if-error={stale_if_error}"
    return (b"cache-control", value.encode("ascii"))


def etag(version: int, key: str) -> bytes:
    """A strong validator: the answer's bytes are fixed by the version and the (lowercase) id,
    and ids hold only ``[A-Za-z0-9_-]``, all legal inside an entity tag."""
    return f'"v{version}-{key}"'.encode("ascii")


def none_match(if_none_match: bytes, tag: bytes) -> bool:
    """False when ``If-None-Match`` names ``tag`` (or ``*``): the client's copy is current.

    Weak comparison (RFC 9110 13.1.2): a ``W/`` prefix on the client's tags is ignored."""
    for candidate in if_none_match.split(b","):
        candidate = candidate.strip()
        if candidate == b"*":
            return False
        if candidate.startswith(b"W/"):
            candidate = candidate[2:]
        if candidate == tag:
            return False
    return True


def if_none_match_of(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The request's ``If-None-Match`` (several fields joined, as RFC 9110 allows)."""
    found: bytes | None = None
    for name, value in headers:
        if name == b"if-none-match":
            found = value if found is None else found + b"," + value
    return found


@dataclass(frozen=True)
class LookupCachePolicy:
    found: Header  # Cache-Control of a 200 (and of its 304)
    missing: Header  # Cache-Control of a 404

    @classmethod
    def from_settings(cls, settings: Settings) -> LookupCachePolicy:
        stale = settings.lookup_stale_if_error_s
        return cls(
            found=_cache_control(settings.lookup_max_age_s, stale),
            missing=_cache_control(settings.lookup_negative_max_age_s, stale),
        )

    def found_headers(self, tag: bytes) -> list[Header]:
        return [self.found, (b"etag", tag)]


def as_str(headers: list[Header]) -> dict[str, str]:
    """For a Starlette ``Response`` (the route's path, not the hottest one)."""
    return {name.decode("ascii"): value.decode("ascii") for name, value in headers}
