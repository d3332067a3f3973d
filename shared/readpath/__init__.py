"""What serves and protects lookups: caches, hot ids, warm-up, read latency."""
