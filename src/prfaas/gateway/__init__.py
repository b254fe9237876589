"""HTTP front door: OpenAI API, auth, SSE, /metrics, /health."""
