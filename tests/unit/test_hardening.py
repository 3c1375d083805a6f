"""The HTTP stack is the hardened one: a fixed aiohttp with its C parser in use."""

from __future__ import annotations

from importlib.metadata import version

from aiohttp import http_parser


def test_aiohttp_has_the_request_parsing_fixes() -> None:
    major, minor, patch = (int(x) for x in version("aiohttp").split(".")[:3])
    assert (major, minor, patch) >= (3, 13, 4)


def test_c_parser_in_use() -> None:
    # the pure-Python fallback is used only when the C extension is missing or disabled
    assert http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser"
    assert http_parser.HttpResponseParser.__module__ == "aiohttp._http_parser"
