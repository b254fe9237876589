"""The connector's inputs from outside: per-request hand-off params and its extra config."""

from __future__ import annotations

from pathlib import Path

import pytest

from prfaas.integrations.vllm.config import ConnectorConfig
from prfaas.integrations.vllm.params import HandoffParams


def test_params_of_a_prefill_and_a_decode_request() -> None:
    sent = HandoffParams.parse({"prfaas_transfer_id": "t1", "prfaas_send_to": "10.0.0.2:7000"})
    assert sent == HandoffParams("t1", ("10.0.0.2", 7000))
    assert HandoffParams.parse({"prfaas_transfer_id": "t1"}) == HandoffParams("t1", None)
    assert HandoffParams.parse({"prfaas_send_to": "h:1"}) is None  # no id: no hand-off
    assert HandoffParams.parse(None) is None
    assert HandoffParams.parse({"prfaas_transfer_id": "t", "prfaas_send_to": "[::1]:9"}) == (
        HandoffParams("t", ("::1", 9))
    )


@pytest.mark.parametrize(
    "params",
    [
        {"prfaas_transfer_id": ""},
        {"prfaas_transfer_id": 7},
        {"prfaas_transfer_id": "x" * 257},
        {"prfaas_transfer_id": "t", "prfaas_send_to": "host"},
        {"prfaas_transfer_id": "t", "prfaas_send_to": "host:0"},
        {"prfaas_transfer_id": "t", "prfaas_send_to": "host:99999"},
        {"prfaas_transfer_id": "t", "prfaas_send_to": ["host", 1]},
    ],
)
def test_bad_params_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        HandoffParams.parse(params)


def test_extra_config_is_validated_at_the_edge(tmp_path: Path) -> None:
    config = ConnectorConfig.from_extra({"listen_port": 7000, "rate_gbps": 2, "codec": "int8"})
    assert config.link_config().rate_gbps == 2 and config.auth_key() is None
    for extra in (
        {"listen_prot": 7000},  # a typo is not silently ignored
        {"listen_port": "7000"},
        {"codec": "gzip"},
        {"certs_dir": "certs"},  # without this instance's cluster name
        {"load_timeout_s": 0},
        {"fingerprint": "not hex"},
    ):
        with pytest.raises(ValueError):
            ConnectorConfig.from_extra(extra)
    token = tmp_path / "token"
    token.write_text("secret\n")
    key = ConnectorConfig.from_extra({"auth_token_file": str(token)}).auth_key()
    assert key is not None and len(key) == 32
    token.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        ConnectorConfig.from_extra({"auth_token_file": str(token)}).auth_key()


def test_a_request_may_name_its_link_and_its_tenant_salt() -> None:
    from prfaas.integrations.vllm.params import LinkChoice, salt_bytes

    link = {"name": "remote->local", "codec": "raw+lz4", "connections": 2, "tls": True}
    params = HandoffParams.parse(
        {"prfaas_transfer_id": "t", "prfaas_send_to": "h:1", "prfaas_link": link}
    )
    assert params is not None
    assert params.link == LinkChoice("remote->local", "raw+lz4", 2, True, "")
    config = ConnectorConfig(link_rates_gbps={"remote->local": 2.5})
    assert config.link_for(params.link).rate_gbps == 2.5
    assert config.link_for(LinkChoice("local")).rate_gbps is None
    for bad in ({"name": ""}, {"name": "x", "tls": "yes"}, {"name": "x", "extra": 1}, "x"):
        with pytest.raises(ValueError, match="prfaas_link"):
            HandoffParams.parse({"prfaas_transfer_id": "t", "prfaas_link": bad})
    assert salt_bytes("00ff") == b"\x00\xff"  # a prfaas worker's tenant_salt_hex
    assert salt_bytes("tenant-a") == b"tenant-a"
    assert salt_bytes(None) == salt_bytes("") == b""
    with pytest.raises(ValueError, match="link_rates_gbps"):
        ConnectorConfig.from_extra({"link_rates_gbps": {"x": -1}})
