"""Bucketed dataset versions: many rows per document, one definition for writers and readers.

A store pays per document (an ``_id`` index entry, a write, per-document overhead), not per
byte, and a point lookup reads one bucket about as fast as one row
(docs/decisions/bucketed-layout.md). So a version holds ``B`` bucket
documents ``{_id: bucket, r: {id: row}}``, a row packed in one BSON binary value (below);
an id lives in bucket ``xxh3_64(lower-cased id) mod B``. ``B`` is chosen when the file is
planned and kept in the version record: it never changes for a version, so a reader can
compute any id's bucket without asking the store.

XXH3 (64 bit, seed 0) is a specified, platform-independent hash: every API process, worker
and future release agrees on an id's bucket. Ids are ``[A-Za-z0-9_-]`` lower-cased, so they
are safe field names (no ``.``, no leading ``$``).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterable
from itertools import repeat
from typing import Any

from xxhash import xxh3_64_intdigest

# A bucket must stay far below MongoDB's 16 MiB document limit whatever the estimate of
# rows per byte says: a row element is at most ~240 bytes (64-byte id twice, a long date),
# and a line at least MIN_LINE_BYTES, so at most MAX_BUCKET_ROWS rows (~4.8 MB) per bucket
# even if every line were as short as possible.
MIN_LINE_BYTES = 24
MAX_BUCKET_ROWS = 20_000
MAX_BUCKETS = 2**31 - 1  # bucket numbers are BSON int32 _ids

_i32 = struct.Struct("<i").pack
# A row's value: BSON binary (subtype 0) ``<price f64><n u8><id as written: n bytes><date>``.
ROW_HEAD = struct.Struct("<iBdB")  # binary length, subtype, price, n
_ROW_PREFIX = struct.Struct("<dB")  # price, n: the start of the binary's payload
ROW_PREFIX_BYTES = _ROW_PREFIX.size


def bucket_of(key: str, buckets: int) -> int:
    """The bucket of a lower-cased id."""
    return xxh3_64_intdigest(key.encode()) % buckets


def buckets_of(keys: Iterable[bytes], buckets: int) -> list[int]:
    """``bucket_of`` for many encoded keys at C speed (the map step's hot path)."""
    return list(map(operator.mod, map(xxh3_64_intdigest, keys), repeat(buckets)))


def bucket_count(file_size: int, mean_line_bytes: float, rows_per_bucket: int) -> int:
    """Buckets for a file: about ``rows_per_bucket`` rows each by the estimate from the
    file's first lines, and never so few that short lines could overfill one."""
    estimated_rows = file_size / max(1.0, mean_line_bytes)
    wanted = -(-int(estimated_rows) // max(1, rows_per_bucket))
    floor = -(-file_size // (MIN_LINE_BYTES * MAX_BUCKET_ROWS))
    return max(1, min(MAX_BUCKETS, max(wanted, floor)))


# --- the shuffle's slices: a fixed hash space the map writes into ---------------------------
#
# The map cannot know the bucket count (it follows the file's real row count, known only
# once every chunk is mapped), so it writes each row into one of ``S`` slices (a power of
# two, SHUFFLE_SLICES): slice ``rev(h mod S)``, ``h`` the row's XXH3 and ``rev`` the
# reversal of its log2(S) bits. After the map, with the exact row count, the bucket count
# ``B`` is chosen as a power of two up to ``S`` or a multiple of ``S``, so that every bucket
# lies in one known run of slices and readers keep ``bucket = h mod B``:
#
# - ``B = k*S``: ``h mod S = (h mod B) mod S``, so slice ``p`` holds exactly the buckets
#   ``b`` with ``b mod S = rev(p)`` (a slice is a group of its own);
# - ``B = 2**j <= S``: ``h mod B`` is the low ``j`` bits of ``h mod S``, which the
#   reversal puts in the high bits of ``p``: bucket ``rev_j(p >> (n-j))`` holds the
#   consecutive slices ``[g*S/B, (g+1)*S/B)`` (a group of ``S/B`` slices).
#
# Reduce tasks are consecutive runs of whole groups, so each reads one contiguous range of
# segments of each run file.


def _bit_reversal(bits: int) -> list[int]:
    return [int(f"{n:0{bits}b}"[::-1], 2) if bits else 0 for n in range(1 << bits)]


_REVERSALS: dict[int, list[int]] = {}


def reversal(slices: int) -> list[int]:
    """``rev`` over ``slices`` (a power of two), cached: the map's hot path indexes it."""
    table = _REVERSALS.get(slices)
    if table is None:
        if slices < 1 or slices & (slices - 1):
            raise ValueError(f"slices must be a power of two, not {slices}")
        table = _REVERSALS[slices] = _bit_reversal(slices.bit_length() - 1)
    return table


def slices_of(keys: Iterable[bytes], slices: int) -> list[int]:
    """The slice of each encoded key, at C speed (the map step's hot path)."""
    table = reversal(slices)
    return list(
        map(table.__getitem__, map(operator.and_, map(xxh3_64_intdigest, keys), repeat(slices - 1)))
    )


def buckets_for(rows: int, rows_per_bucket: int, slices: int) -> int:
    """Buckets for ``rows`` rows (exact, from the map): about ``rows_per_bucket`` each,
    a power of two up to ``slices``, a multiple of ``slices`` beyond (see above)."""
    wanted = max(1, -(-rows // max(1, rows_per_bucket)))
    if wanted <= slices:
        return 1 << (wanted - 1).bit_length()
    return min(MAX_BUCKETS // slices * slices, -(-wanted // slices) * slices)


def group_slices(buckets: int, slices: int) -> int:
    """Consecutive slices that share buckets and so go to one reduce task together."""
    return max(1, slices // buckets)


def coalesce(counts: list[int], group: int, bound: int) -> list[int]:
    """Reduce tasks as slice bounds ``[0, ..., len(counts)]``: consecutive whole groups of
    at most ``bound`` rows together, as adaptive query execution coalesces small shuffle
    partitions. A group over ``bound`` alone is a task of its own (reduced by an external
    merge). Empty ranges are never made."""
    bounds = [0]
    held = 0
    for first in range(0, len(counts), group):
        rows = sum(counts[first : first + group])
        if held and held + rows > bound:
            bounds.append(first)
            held = 0
        held += rows
    if bounds[-1] != len(counts) or len(bounds) == 1:
        bounds.append(len(counts))
    return bounds


# --- the bucket document, built from pre-encoded row elements -----------------------------


def encode_element(key: bytes, row_id: bytes, price: float, expiration_date: bytes) -> bytes:
    """One row as the element ``key: <binary>`` of a bucket's ``r`` document.

    Packed in one binary value, not a ``{p, e, i}`` subdocument: the store decodes and
    re-encodes one element per row instead of four, which made its inserts ~1.3x cheaper in
    CPU on the dev store (docs/decisions/packed-rows.md). ``n`` is 0 when the id as written
    is the lower-cased key (ids are at most 64 characters)."""
    written = b"" if row_id == key else row_id
    size = ROW_PREFIX_BYTES + len(written) + len(expiration_date)
    head = ROW_HEAD.pack(size, 0, price, len(written))
    return b"\x05" + key + b"\x00" + head + written + expiration_date


def row_of(key: str, value: Any) -> dict[str, Any]:
    """The public answer (id as written, price, expiration_date) of one stored row: packed
    (``bytes``), or a ``{p, e, [i]}`` subdocument as versions written before packing hold
    (kept readable for rollback)."""
    if isinstance(value, bytes):
        price, n = _ROW_PREFIX.unpack_from(value)
        start = ROW_PREFIX_BYTES + n
        return {
            "id": value[ROW_PREFIX_BYTES:start].decode() if n else key,
            "price": price,
            "expiration_date": value[start:].decode(),
        }
    return {"id": value.get("i", key), "price": value["p"], "expiration_date": value["e"]}


def bucket_document(bucket: int, elements: list[bytes]) -> bytes:
    """BSON of ``{_id: bucket, r: {...}}`` from its rows' elements (distinct keys)."""
    rows = b"".join(elements)
    r = b"\x03r\x00" + _i32(len(rows) + 5) + rows + b"\x00"
    body = b"\x10_id\x00" + _i32(bucket) + r
    return _i32(len(body) + 5) + body + b"\x00"


# --- reading --------------------------------------------------------------------------------


def lookup(keys: list[str], buckets: int) -> tuple[dict[str, Any], dict[str, int]]:
    """Filter and projection reading ``keys``: their buckets, only their rows."""
    numbers = sorted({bucket_of(key, buckets) for key in keys})
    query: dict[str, Any] = {"_id": numbers[0]} if len(numbers) == 1 else {"_id": {"$in": numbers}}
    return query, {f"r.{key}": 1 for key in keys}


def rows_found(docs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Public answers (id as written, price, expiration_date) of the rows in bucket docs."""
    found: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for key, row in (doc.get("r") or {}).items():
            found[key] = row_of(key, row)
    return found
