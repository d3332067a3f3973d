"""Text that came from outside (partners' file names, job errors) made safe to show.

File names on POSIX are bytes: Python decodes the ones that are not UTF-8 with
``surrogateescape``, which neither BSON nor a terminal accepts. Control characters (a newline,
a terminal escape sequence, a bidirectional override) would forge log lines or rewrite a
terminal. ``escape_name`` keeps every byte visible as a ``\\xNN`` escape instead.
"""

from __future__ import annotations

import unicodedata

# Invisible characters that change how the rest of a line displays (bidi overrides, line
# and paragraph separators); formatting characters such as ZWJ in emoji stay.
_UNSAFE_FORMAT = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(char: str) -> bool:
    return char in _UNSAFE_FORMAT or unicodedata.category(char) in ("Cc", "Cs")


def escape_controls(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``, ``\\u202e``)."""
    if not any(_unsafe(char) for char in text):
        return text
    out = []
    for char in text:
        if not _unsafe(char):
            out.append(char)
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out)


def escape_name(name: str) -> str:
    """A file name as valid, printable UTF-8: bytes that were not UTF-8 become ``\\xNN``."""
    raw = name.encode("utf-8", "surrogateescape")
    return escape_controls(raw.decode("utf-8", "backslashreplace"))
