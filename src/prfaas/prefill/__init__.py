"""Prefill role: an engine plus the KV sender."""
