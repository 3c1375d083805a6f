"""``web.AppKey``s for every object the application shares."""

from __future__ import annotations

from aiohttp import web

from router.gateway import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
