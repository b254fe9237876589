"""Bad input is a 4xx in the OpenAI error format and the server stays healthy; overload is a
429 with Retry-After; a property test of the request schema never sees a 500."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prfaas.api.errors import APIError
from prfaas.api.prepare import parse_body, prepare_completion
from prfaas.api.protocol import CompletionRequest
from prfaas.messages import SamplingSpec
from prfaas.sampling import to_sampling_params
from tests.gateway.conftest import API_KEY, FakeBackend, LocalServer, ServerThread

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LONG = " ".join(["w9"] * 600)  # over the tiny model's 512-token context
CASES: list[tuple[str, str, bytes | dict[str, Any], int, str | None]] = [
    ("malformed json", "/v1/completions", b'{"prompt": "w5",', 400, None),
    ("not an object", "/v1/completions", b"[1, 2]", 400, None),
    ("invalid utf-8", "/v1/completions", b'{"prompt": "\xff\xfe"}', 400, None),
    ("wrong type", "/v1/chat/completions", {"messages": "hi"}, 400, None),
    ("wrong type 2", "/v1/completions", {"prompt": "w5", "temperature": "hot"}, 400, None),
    ("missing prompt", "/v1/completions", {"model": "tiny"}, 400, None),
    (
        "unknown model",
        "/v1/completions",
        {"model": "gpt-9", "prompt": "w5"},
        404,
        "model_not_found",
    ),
    ("prompt too long", "/v1/completions", {"prompt": LONG}, 400, "context_length_exceeded"),
    (
        "absurd max_tokens",
        "/v1/completions",
        {"prompt": "w5", "max_tokens": 10**12},
        400,
        "context_length_exceeded",
    ),
    ("zero max_tokens", "/v1/completions", {"prompt": "w5", "max_tokens": 0}, 400, None),
    ("too many stops", "/v1/completions", {"prompt": "w5", "stop": ["x"] * 17}, 400, None),
    (
        "n too large",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "w5"}], "n": 17},
        400,
        None,
    ),
    ("unsupported field", "/v1/completions", {"prompt": "w5", "suffix": "w6"}, 400, None),
    ("logprobs too many", "/v1/completions", {"prompt": "w5", "logprobs": 21}, 400, None),
    ("token out of vocab", "/v1/completions", {"prompt": [5, 10**6]}, 400, None),
    ("empty prompt", "/v1/completions", {"prompt": []}, 400, None),
    ("too many prompts", "/v1/completions", {"prompt": ["w5"] * 65}, 400, None),
    ("logit_bias id", "/v1/completions", {"prompt": "w5", "logit_bias": {"x": 1}}, 400, None),
    ("bad temperature", "/v1/completions", {"prompt": "w5", "temperature": -1}, 400, None),
    ("nan top_p", "/v1/completions", b'{"prompt": "w5", "top_p": NaN}', 400, None),
    ("huge seed", "/v1/completions", {"prompt": "w5", "seed": 10**30}, 400, None),
    ("deep nesting", "/v1/completions", b"[" * 100_000 + b"]" * 100_000, 400, None),
    ("lone surrogate", "/v1/completions", b'{"prompt": "w5 \\ud800"}', 400, None),
    (
        "image part",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        None,
    ),
    ("oversized body", "/v1/completions", {"prompt": "w5 " * 1_500_000}, 413, None),
    ("bool as integer", "/v1/completions", {"prompt": "w5", "max_tokens": True}, 400, None),
    ("string as boolean", "/v1/completions", {"prompt": "w5", "stream": "yes"}, 400, None),
    ("string as number", "/v1/completions", {"prompt": "w5", "temperature": "0.5"}, 400, None),
    ("float as integer", "/v1/completions", {"prompt": "w5", "max_tokens": 2.5}, 400, None),
    (
        "too many stop token ids",
        "/v1/completions",
        {"prompt": "w5", "stop_token_ids": list(range(65))},
        400,
        None,
    ),
    ("stop string too long", "/v1/completions", {"prompt": "w5", "stop": ["x" * 257]}, 400, None),
    ("empty stop string", "/v1/completions", {"prompt": "w5", "stop": [""]}, 400, None),
    ("no messages", "/v1/chat/completions", {"messages": []}, 400, None),
    (
        "integer too long",
        "/v1/completions",
        b'{"prompt": "w5", "max_tokens": 1' + b"0" * 5000 + b"}",
        400,
        None,
    ),
    (
        "absurd max_completion_tokens",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "w5"}], "max_completion_tokens": 10**9},
        400,
        "context_length_exceeded",
    ),
]


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "code"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused(
    local_server: LocalServer,
    name: str,
    path: str,
    body: bytes | dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    r = httpx.post(f"{local_server.base_url}{path}", content=content, headers=headers)
    assert_openai_error(r, status, code)
    assert "x-prfaas-route" in r.headers
    ok = httpx.post(
        f"{local_server.base_url}/v1/completions",
        json={"prompt": "w5 w6", "max_tokens": 2},
        headers=AUTH,
    )
    assert ok.status_code == 200
    assert httpx.get(f"{local_server.base_url}/health").json() == {"status": "ok"}
    local_server.check_engine()


def test_oversized_chunked_body_is_413(local_server: LocalServer) -> None:
    """No Content-Length to refuse early: the body is counted as it streams in."""

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(80):
            yield b"w5 " * 20_000
        yield b'"}'

    r = httpx.post(f"{local_server.base_url}/v1/completions", content=chunks(), headers=AUTH)
    assert_openai_error(r, 413)
    assert httpx.get(f"{local_server.base_url}/health").status_code == 200


@pytest.mark.parametrize("length", [b"abc", b"-5", b"99999999999999999999"])
def test_bad_content_length_is_4xx(local_server: LocalServer, length: bytes) -> None:
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"Authorization: "
        + AUTH["Authorization"].encode()
        + b"\r\n"
        + b"Content-Length: "
        + length
        + b"\r\n\r\n{}"
    )
    with socket.create_connection(("127.0.0.1", local_server.thread.port), timeout=10) as sock:
        sock.sendall(request)
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split()[1] in (b"400", b"413"), status_line
    assert httpx.get(f"{local_server.base_url}/health").status_code == 200


@pytest.mark.parametrize("prompt", [["w5 w6"], [[5, 6]]])
def test_batch_of_one_is_one_prompt(local_server: LocalServer, prompt: list[Any]) -> None:
    r = httpx.post(
        f"{local_server.base_url}/v1/completions",
        json={"prompt": prompt, "max_tokens": 2},
        headers=AUTH,
    )
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 2


def test_context_message_is_vllm_style(local_server: LocalServer) -> None:
    r = httpx.post(
        f"{local_server.base_url}/v1/completions",
        json={"prompt": "w5 w6 w7", "max_tokens": 510},
        headers=AUTH,
    )
    assert r.json()["error"]["message"].startswith(
        "This model's maximum context length is 512 tokens. However, you requested 513 tokens"
    )


def test_unknown_path_is_openai_404(local_server: LocalServer) -> None:
    assert_openai_error(httpx.get(f"{local_server.base_url}/v1/nothing"), 404)


def test_full_admission_is_429(fake_server: tuple[FakeBackend, ServerThread]) -> None:
    backend, server = fake_server
    hold = asyncio.Event()

    async def set_hold() -> None:
        backend.hold = hold

    server.run(set_hold())
    url = f"{server.base_url}/v1/completions"
    body = {"prompt": "w5", "max_tokens": 2, "stream": True}
    with httpx.Client(timeout=10) as client:
        held = [client.stream("POST", url, json=body) for _ in range(2)]
        responses = [h.__enter__() for h in held]
        try:
            r = client.post(url, json=body)
            assert_openai_error(r, 429)
            assert r.headers["retry-after"] == "3"
        finally:
            server.loop.call_soon_threadsafe(hold.set)  # type: ignore[union-attr]
            for h, resp in zip(held, responses, strict=True):
                assert resp.status_code == 200
                resp.read()
                h.__exit__(None, None, None)

    async def clear_hold() -> None:
        backend.hold = None

    server.run(clear_hold())
    assert client_ok(server.base_url)


def client_ok(base_url: str) -> bool:
    r = httpx.post(f"{base_url}/v1/completions", json={"prompt": "w5", "max_tokens": 3})
    return r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "logprobs",
    "echo",
    "stop_token_ids",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_tokens",
    "min_p",
    "logit_bias",
    "top_logprobs",
    "response_format",
    "include_stop_str_in_output",
    "tools",
    "store",
]


part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=10)}
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool"]) | st.text(max_size=5),
            "content": st.none() | st.text(max_size=30) | st.lists(part, max_size=2),
        }
    ),
    max_size=3,
)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
    body=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
    prompt=st.one_of(st.text(max_size=30), st.lists(st.integers(-5, 300), max_size=6)),
    conversation=messages,
)
def test_request_schema_never_500(
    fake_server: tuple[FakeBackend, ServerThread],
    path: str,
    body: dict[str, Any],
    prompt: Any,
    conversation: list[dict[str, Any]],
) -> None:
    _, server = fake_server
    if path == "/v1/completions":
        body.setdefault("prompt", prompt)
    else:
        body.setdefault("messages", conversation)
    if "max_tokens" not in body:
        body["max_tokens"] = 4
    r = httpx.post(f"{server.base_url}{path}", content=json.dumps(body).encode())
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8))
def test_what_the_gateway_accepts_every_worker_accepts(tiny_tokenizer: Any, body: Any) -> None:
    """The cluster path re-validates sampling parameters in each worker message: a request
    the gateway admits must never become a message a worker refuses (a 503, not a 400)."""
    body.setdefault("prompt", "w5 w6")
    try:
        req = parse_body(json.dumps(body).encode(), CompletionRequest)
        prepared = prepare_completion(req, tiny_tokenizer, 512)
    except APIError as exc:
        assert 400 <= exc.status < 500
        return
    spec = SamplingSpec.decode(prepared.params.encode())
    assert spec == prepared.params
    to_sampling_params(spec)  # the engine's own validation accepts it too
