"""The path-consistency canary: the same greedy prompts through every path a request can take
(prefill instance, link, codec, decode instance) and through a reference path (prefill and
decode on one instance), compared token by token and logprob by logprob. A path that breaks
its codec's bound, or whose decode side recomputed the prompt it was sent ("fake
disaggregation"), is reported and, with quarantine on, routed around until it passes again.

Decision code only (no torch, no HTTP): the gateway supplies the probe that runs a prompt on
one path (``dispatch/cluster.py``) and serves the board (``deploy/``)."""
