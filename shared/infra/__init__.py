"""Plumbing: store clients, logging, safe file and text handling, task names."""
