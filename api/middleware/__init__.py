"""The ASGI layers every request passes: limits, request id, metrics, headers."""
