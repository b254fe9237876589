"""KV over TCP: wire format, codecs, pacing, TLS, sender, receiver. Bytes, not models."""
