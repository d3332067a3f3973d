"""One log format for every process: readable lines with the process role."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if getattr(root, "_promotions_configured", False):
        return
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    root._promotions_configured = True  # type: ignore[attr-defined]
