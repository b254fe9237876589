"""The cluster backend behind the front door: route each request, open its decode stream
(reserved first, watched for stalls, failed over when lost), start the prefill that ships
its KV, pull cached prefixes across clusters. Implements the gateway's ``Backend``; talks to
workers over their control plane (``worker_client``), never imports an engine."""
