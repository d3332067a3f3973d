"""Benchmarks: each one compares the service with a bare reference in the same run."""
