"""Per-backend TLS and proxy settings: config checks and proxy choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import ConfigError
from router.config_load import parse_config
from router.egress import resolve_proxy, safe_url
from tests.support.tls import private_ca

BASE = """
backends:
  up: {provider: openai, url: "https://inference.internal/v1", %s}
pools: {p: {members: [{backend: up, model: m}]}}
models: {m: {routes: [{pools: [p]}]}}
"""


def problems(extra: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE % extra, "t", env={})
    return "; ".join(err.value.problems)


def test_tls_settings_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    ca = private_ca(tmp_path)
    good = f"tls: {{ca_file: {ca.ca_file}, cert_file: {ca.client_cert_file}, " \
           f"key_file: {ca.client_key_file}}}"  # fmt: skip
    parse_config(BASE % good, "t", env={})
    assert "backends.up.tls" in problems("tls: {ca_file: /nonexistent/ca.pem}")
    assert "cannot read /nonexistent/ca.pem" in problems("tls: {ca_file: /nonexistent/ca.pem}")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    assert "cannot load the TLS files" in problems(f"tls: {{ca_file: {garbage}}}")
    assert "key_file needs cert_file" in problems(f"tls: {{key_file: {ca.client_key_file}}}")
    assert "proxy must be an http(s) URL" in problems("proxy: socks5://p:1080")
    assert "give one credential" in problems('api_key: "k1234567", api_key_file: /x')


@pytest.mark.parametrize(
    ("url", "env", "want"),
    [
        ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
        ("https://api.openai.com/v1", {"https_proxy": "proxy:3128"}, "http://proxy:3128"),
        ("http://gpu:8000/v1", {"HTTPS_PROXY": "http://proxy:3128"}, None),
        ("http://gpu:8000/v1", {"HTTP_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
        ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None),
        ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "openai.com"},
         None),
        ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".openai.com"},
         None),
        ("https://notopenai.com/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "openai.com"},
         "http://p:1"),
        ("http://10.0.0.5:8000/v1", {"HTTP_PROXY": "http://p:1", "no_proxy": "10.0.0.5:8000"},
         None),
        ("http://[::1]:8000/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "[::1]"}, None),
        ("http://[::1]:8000/v1", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "::1"}, None),
    ],
)  # fmt: skip
def test_proxy_from_the_environment(url: str, env: dict[str, str], want: str | None) -> None:
    proxy, headers = resolve_proxy(url, None, env)
    assert (str(proxy) if proxy is not None else None) == want
    assert headers is None


def test_configured_proxy_wins_and_its_credentials_leave_the_url() -> None:
    proxy, headers = resolve_proxy(
        "https://api.openai.com/v1", "http://me:p%40ss@egress:3128",
        {"HTTPS_PROXY": "http://other:1", "NO_PROXY": "*"},
    )  # fmt: skip
    assert str(proxy) == "http://egress:3128"
    assert headers == {"Proxy-Authorization": "Basic bWU6cEBzcw=="}  # me:p@ss
    assert safe_url("http://me:secret@egress:3128") == "http://egress:3128"
