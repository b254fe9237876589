"""The gateway's fixtures (the fake tier and the tiny LocalBackend server) for the API tests."""

from tests.gateway.conftest import (  # noqa: F401
    fake_server,
    local_server,
    tiny_engine,
    tiny_tokenizer,
)
