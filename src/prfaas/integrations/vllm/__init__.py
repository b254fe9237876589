"""A prfaas KV connector for vLLM (``connector.PrfaasConnector``); see docs/vllm.md.

Import-free on purpose: vLLM is optional and lives in its own venv (``make setup-vllm``).
Modules: params (what a request says), config (the connector's extra config), scheduler_side
and worker_side (vLLM's two halves), sending and loading (the transfers), layout (vLLM's
blocks <-> per-token wire rows), events (one JSON line per ended hand-off).
"""
