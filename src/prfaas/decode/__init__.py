"""Decode role: the KV receiver plus an engine."""
