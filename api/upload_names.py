"""The name an upload was sent under, kept on its job for operators (the page, the CLI).

Partner text, never a path: only its last path component is kept (either separator), control
characters are dropped and the length is bounded; the stored file always has a server-made
name."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from python_multipart.multipart import parse_options_header

MAX_NAME_CHARS = 255
# RFC 6266 / 5987 ``filename*=charset'lang'percent-encoded`` (parse_options_header drops it).
_EXTENDED = re.compile(rb"filename\*\s*=\s*([A-Za-z0-9!#$&+.^_`|~-]*)'[^']*'([^;\s]+)", re.I)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean_name(raw: str | None) -> str | None:
    """The display name of ``raw``; None when nothing usable is left."""
    if not raw:
        return None
    name = _CONTROL.sub("", raw).replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in ("", ".", ".."):
        return None
    return name[:MAX_NAME_CHARS]


def header_file_name(value: bytes) -> str | None:
    """The ``filename*`` (RFC 6266, preferred) or ``filename`` of a Content-Disposition."""
    extended = _EXTENDED.search(value)
    if extended:
        charset = extended.group(1).decode("ascii") or "utf-8"
        try:
            return unquote_to_bytes(extended.group(2)).decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    _, options = parse_options_header(value)
    plain = options.get(b"filename")
    return plain.decode("utf-8", errors="replace") if plain else None
