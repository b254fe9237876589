"""The OpenAI API as prfaas speaks it: request and response types, what a request means
(token ids and sampling parameters, or a refusal naming the field), errors and SSE framing.
Plain data to data: the gateway serves it over HTTP; the load generator and tests share it."""
