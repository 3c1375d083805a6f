"""The ``spillway`` command: serve | check | explain | keys | simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from router import __version__, logs, metrics
from router.app import create_app, create_metrics_app, make_runner
from router.config import Config, ConfigError, SimulateSettings
from router.config_load import load_config
from router.keys import GATEWAY
from router.routing.explain import explain, render
from router.simserver import create_sim_app

DEMO_KEY_ENV = "SPILLWAY_DEMO_KEY"
ADMIN_TOKEN_ENV = "SPILLWAY_ADMIN_TOKEN"
log = logging.getLogger("spillway")


GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython: 700)


def tune_gc() -> None:
    """Once the app is built: what exists now lives as long as the process, so the
    cyclic collector stops scanning it (``gc.freeze``), and young collections run
    less often. A request allocates hundreds of short-lived objects that reference
    counting frees; scanning them every 700 allocations cost about 5% of a request's
    instructions (measured with tests/bench/hotpath.py under callgrind)."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def _config_path(arg: str | None) -> str | None:
    return arg or os.environ.get("SPILLWAY_CONFIG") or None


def _banner(cfg: Config, host: str, port: int, default: bool) -> str:
    shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1") else host
    url = f"http://{shown}:{port}"
    lines = [f"spillway {__version__} listening on http://{host}:{port}"]
    if default:
        key = os.environ.get(DEMO_KEY_ENV, "sk-spillway-demo")
        lines += [
            "  config: built-in default (simulated model 'demo', in-process quotas)",
            f"  demo key: {key}",
            "  try it:",
            f"    curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' "
            '-d \'{"model": "demo", "messages": [{"role": "user", "content": "Hello!"}]}\'',
        ]
    return "\n".join(lines)


async def _serve(
    cfg: Config, host: str, port: int, *, reuse_port: bool, banner: bool, path: str | None
) -> None:
    app = create_app(cfg, config_path=path)
    runner = make_runner(app, cfg)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=2048)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    sockets = getattr(site._server, "sockets", None)  # the bound port, when 0 was asked
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    metrics_runner = web.AppRunner(create_metrics_app(app), access_log=None)
    if cfg.server.metrics_port is not None:  # /metrics on a port of its own
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, host, cfg.server.metrics_port,
                          reuse_port=reuse_port or None).start()  # fmt: skip
        log.info("metrics on http://%s:%d/metrics", host, cfg.server.metrics_port)
    if banner:
        print(_banner(cfg, host, bound, path is None), flush=True)
    tune_gc()
    gateway = app[GATEWAY]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.request_reload, "SIGHUP")
    try:
        await stop.wait()
    finally:
        # readiness fails first, then the listener closes and in-flight requests get
        # server.shutdown_grace_seconds to finish (aiohttp's graceful shutdown)
        gateway.draining.set()
        delay = gateway.cfg.server.drain_delay_seconds
        log.info("draining: readiness fails now, listener closes in %gs", delay)
        if delay:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(delay)
        loop.remove_signal_handler(signal.SIGHUP)
        await runner.cleanup()
        await metrics_runner.cleanup()
        log.info("stopped")


def _run_workers(n: int, target: Sequence[object]) -> int:
    """Fork ``n`` workers sharing the port (SO_REUSEPORT); wait; forward signals.

    The workers share one metrics directory (``$PROMETHEUS_MULTIPROC_DIR`` when
    set, else a fresh temporary one removed at exit), so ``/metrics`` on any of
    them reports the whole process group.
    """
    owned: str | None = None
    path = os.environ.get(metrics.MULTIPROC_ENV)
    if path:
        metrics.prepare_multiprocess_dir(path)
    else:
        path = owned = tempfile.mkdtemp(prefix="spillway-metrics-")
    os.environ[metrics.MULTIPROC_ENV] = path
    children: list[int] = []
    try:
        for i in range(n):
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handles it
                os.environ["SPILLWAY_WORKER"] = str(i)
                code = 0
                try:
                    metrics.use_multiprocess(path)
                    fn, args = target[0], target[1]
                    assert callable(fn) and isinstance(args, tuple)
                    fn(*args, i == 0)
                except BaseException:  # noqa: BLE001 - a worker must never return into the parent
                    code = 1
                os._exit(code)
            children.append(pid)

        def forward(signum: int, _frame: object) -> None:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        status = 0
        while children:
            pid, code = os.wait()
            if pid in children:
                children.remove(pid)
                metrics.mark_worker_dead(pid, path)
                status = status or os.waitstatus_to_exitcode(code)
        return status
    finally:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)


def _serve_one(
    cfg: Config, host: str, port: int, reuse: bool, path: str | None, banner: bool
) -> None:
    _install_uvloop()
    asyncio.run(_serve(cfg, host, port, reuse_port=reuse, banner=banner, path=path))


def cmd_serve(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    logs.setup(cfg.logging.level, cfg.logging.format)
    host = args.host or cfg.listen.host
    port = cfg.listen.port if args.port is None else args.port
    shared = os.environ.get(metrics.MULTIPROC_ENV)
    if args.workers == 1 and shared:
        metrics.prepare_multiprocess_dir(shared)
    if args.workers > 1:
        if port == 0:
            print("--workers needs a fixed --port", file=sys.stderr)
            return 2
        if not cfg.redis.enabled:
            logging.getLogger("spillway").warning(
                "no redis.url: each of the %d workers keeps its own rate limits and budgets "
                "(set redis.url to share them)", args.workers,
            )  # fmt: skip
        return _run_workers(args.workers, (_serve_one, (cfg, host, port, True, path)))
    _serve_one(cfg, host, port, False, path, True)
    return 0


def _print_problems(exc: ConfigError) -> None:
    print(f"{exc.source}: invalid config", file=sys.stderr)
    for line in exc.problems:
        print(f"  {line}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    print(
        f"{args.file}: ok ({len(cfg.backends)} backends, {len(cfg.pools)} pools, "
        f"{len(cfg.models)} models, {len(cfg.teams)} teams, {len(cfg.keys)} keys)"
    )
    return 0


def _header_pairs(pairs: Sequence[str]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            print(f"--header {pair!r}: expected NAME=VALUE", file=sys.stderr)
            return None
        out[name.strip()] = value
    return out


def _ask_gateway(args: argparse.Namespace, headers: dict[str, str]) -> dict[str, Any] | None:
    key = args.key or os.environ.get("SPILLWAY_KEY")
    if not key:
        print("--url needs --key (or $SPILLWAY_KEY): the team comes from the key", file=sys.stderr)
        return None
    query: dict[str, str] = {"model": args.model}
    if args.prompt_tokens is not None:
        query["prompt_tokens"] = str(args.prompt_tokens)
    if args.max_tokens is not None:
        query["max_tokens"] = str(args.max_tokens)
    if args.stream:
        query["stream"] = "1"
    if args.tools:
        query["tools"] = "1"
    base = args.url.rstrip("/").removesuffix("/v1")
    req = urllib.request.Request(
        f"{base}/v1/spillway/explain?{urllib.parse.urlencode(query)}",
        headers={**headers, "Authorization": f"Bearer {key}"},
    )
    return _fetch_json(req, base, timeout=10)


def _fetch_json(req: urllib.request.Request, base: str, timeout: float) -> dict[str, Any] | None:
    """A gateway's JSON answer; None after printing the error it gave (or why none came)."""
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        print(f"{base}: HTTP {exc.code}: {message}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{base}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    return None


def cmd_explain(args: argparse.Namespace) -> int:
    headers = _header_pairs(args.header or [])
    if headers is None:
        return 2
    if args.url:
        doc = _ask_gateway(args, headers)
        if doc is None:
            return 2
    else:
        if not args.team:
            print("--team is required (or ask a running gateway with --url/--key)", file=sys.stderr)
            return 2
        try:
            cfg = load_config(_config_path(args.config))
        except ConfigError as exc:
            _print_problems(exc)
            return 2
        doc = explain(
            cfg, team=args.team, model=args.model, prompt_tokens=args.prompt_tokens,
            headers=headers, stream=args.stream, tools=args.tools,
        )  # fmt: skip
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render(doc), end="")
    return 1 if doc.get("problem") else 0


def _admin_call(
    args: argparse.Namespace, method: str, path: str = "", body: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """One admin API call; the answer, or None after printing why it failed."""
    token = args.token or os.environ.get(ADMIN_TOKEN_ENV)
    if not token:
        print(f"--token (or ${ADMIN_TOKEN_ENV}) is required: an admin token", file=sys.stderr)
        return None
    base = args.url.rstrip("/")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{base}/admin/v1/keys{path}", data=data, method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    return _fetch_json(req, base, timeout=30)


def _key_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The key fields given on the command line (create and update)."""
    body: dict[str, Any] = {}
    limits = {name: value for name, value in (
        ("requests_per_minute", args.rpm), ("tokens_per_minute", args.tpm),
        ("concurrent", args.concurrent)) if value is not None}  # fmt: skip
    if limits:
        body["limits"] = limits
    if args.model:
        body["models"] = args.model
    if args.budget:
        body["budgets"] = [json.loads(b) for b in args.budget]
    if args.expires_at:
        body["expires_at"] = args.expires_at
    if args.description:
        body["description"] = args.description
    return body


def cmd_keys(args: argparse.Namespace) -> int:
    """spillway keys create|list|get|rotate|revoke against a gateway's admin listener."""
    action = args.action
    doc: dict[str, Any] | None
    try:
        if action == "create":
            doc = _admin_call(args, "POST", "", {"team": args.team, **(
                {"id": args.id} if args.id else {}), **_key_fields(args)})  # fmt: skip
        elif action == "list":
            query = {k: v for k, v in (("team", args.team),
                     ("include_revoked", "true" if args.all else None)) if v}  # fmt: skip
            suffix = "?" + urllib.parse.urlencode(query) if query else ""
            doc = _admin_call(args, "GET", suffix)
        elif action == "get":
            doc = _admin_call(args, "GET", "/" + urllib.parse.quote(args.id, safe=""))
        elif action == "rotate":
            path = "/" + urllib.parse.quote(args.id, safe="") + "/rotate"
            doc = _admin_call(args, "POST", path, {"grace_seconds": args.grace})
        else:
            doc = _admin_call(args, "DELETE", "/" + urllib.parse.quote(args.id, safe=""))
    except ValueError as exc:  # a --budget that is not JSON
        print(f"--budget: {exc}", file=sys.stderr)
        return 2
    if doc is None:
        return 1
    if action == "list" and not args.json:
        for key in doc["data"]:
            state = "revoked" if key["revoked_at"] else f"expires {key['expires_at']}" if (
                key["expires_at"]) else "active"  # fmt: skip
            print(f"{key['id']}\tteam={key['team']}\t{state}")
        return 0
    print(json.dumps(doc, indent=2))
    if "secret" in doc and not args.json:
        print(f"\nThe secret is shown only now: {doc['secret']}", file=sys.stderr)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        knobs = SimulateSettings(
            ttft_ms=args.ttft_ms, tokens_per_second=args.tokens_per_second,
            failure_rate=args.failure_rate, failure_status=args.failure_status, seed=args.seed,
            max_num_seqs=args.max_num_seqs, prefix_cache_blocks=args.prefix_cache_blocks,
            block_size=args.block_size,
        )  # fmt: skip
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            print(f"spillway simulate: --{str(err['loc'][0]).replace('_', '-')}: {err['msg']}",
                  file=sys.stderr)  # fmt: skip
        return 2
    _install_uvloop()
    app = create_sim_app(knobs, args.model or None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(f"spillway simulate listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, access_log=None, print=None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spillway", description="OpenAI-compatible LLM gateway.")
    p.add_argument("--version", action="version", version=f"spillway {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", help="YAML config (default: $SPILLWAY_CONFIG, else built-in)")
    s.add_argument("--host", help="listen address (overrides listen.host)")
    s.add_argument("--port", type=int, help="listen port (overrides listen.port; 0: any)")
    s.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    s.set_defaults(fn=cmd_serve)

    c = sub.add_parser("check", help="validate a config file")
    c.add_argument("file")
    c.set_defaults(fn=cmd_check)

    e = sub.add_parser(
        "explain", help="which route and pools a request would take, and why",
        description="Explain routing from the config alone (--config, --team), or ask a "
        "running gateway with live health, load and budgets (--url, --key).",
    )  # fmt: skip
    e.add_argument("--config", help="YAML config (default: $SPILLWAY_CONFIG, else built-in)")
    e.add_argument("--team", help="the caller's team (with --config)")
    e.add_argument("--model", required=True, help="the model name the client sends")
    e.add_argument("--prompt-tokens", type=int, help="prompt size for prompt_tokens_* rules")
    e.add_argument("--max-tokens", type=int, help="max_tokens the request asks (with --url)")
    e.add_argument("--header", action="append", metavar="NAME=VALUE", help="a request header")
    e.add_argument("--stream", action="store_true", help="a streaming request")
    e.add_argument("--tools", action="store_true", help="a request with tools")
    e.add_argument("--url", help="a running gateway to ask (live state)")
    e.add_argument("--key", help="an API key for --url (default: $SPILLWAY_KEY)")
    e.add_argument("--json", action="store_true", help="print the explanation as JSON")
    e.set_defaults(fn=cmd_explain)

    k = sub.add_parser(
        "keys", help="create, list, rotate and revoke database keys (admin API)",
        description="Manage the keys kept in the database through a gateway's admin listener.",
    )  # fmt: skip
    k.add_argument("action", choices=("create", "list", "get", "rotate", "revoke"))
    k.add_argument("id", nargs="?", help="the key id (get, rotate, revoke; optional for create)")
    k.add_argument("--url", required=True, help="the admin listener, e.g. http://127.0.0.1:8081")
    k.add_argument("--token", help=f"an admin token (default: ${ADMIN_TOKEN_ENV})")
    k.add_argument("--team", help="the key's team (create; a filter for list)")
    k.add_argument("--model", action="append", help="a model the key may use (repeatable)")
    k.add_argument("--rpm", type=int, help="the key's requests_per_minute")
    k.add_argument("--tpm", type=int, help="the key's tokens_per_minute")
    k.add_argument("--concurrent", type=int, help="the key's concurrent requests")
    k.add_argument("--budget", action="append", metavar="JSON",
                   help='a budget, e.g. \'{"usd_per_month": 50}\' (repeatable)')  # fmt: skip
    k.add_argument("--expires-at", help="RFC 3339 time the key stops working")
    k.add_argument("--description", help="a note on the key")
    k.add_argument("--grace", type=int, default=0,
                   help="rotate: seconds the old secret keeps working")  # fmt: skip
    k.add_argument("--all", action="store_true", help="list: revoked keys too")
    k.add_argument("--json", action="store_true", help="print JSON only")
    k.set_defaults(fn=cmd_keys)

    m = sub.add_parser("simulate", help="run the simulated model as an OpenAI-compatible server")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, default=8000)
    m.add_argument("--model", action="append", help="model name to list (repeatable)")
    m.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    m.add_argument("--tokens-per-second", type=float, default=0.0, help="0: as fast as possible")
    m.add_argument("--failure-rate", type=float, default=0.0, help="fraction of requests failed")
    m.add_argument("--failure-status", type=int, default=503)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument(
        "--max-num-seqs",
        type=int,
        default=0,
        help="requests generated at once; the rest wait (0: no limit)",
    )
    m.add_argument(
        "--prefix-cache-blocks",
        type=int,
        default=0,
        help="prefix cache size in blocks (0: no prefix cache)",
    )
    m.add_argument("--block-size", type=int, default=16, help="tokens per cache block")
    m.set_defaults(fn=cmd_simulate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "keys":
        if args.action in ("get", "rotate", "revoke") and not args.id:
            parser.error(f"keys {args.action} needs the key id")
        if args.action == "create" and not args.team:
            parser.error("keys create needs --team")
    code: int = args.fn(args)
    return code
