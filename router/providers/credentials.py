"""A backend's credential, and reading it again when it may have changed.

A credential comes from the config (``api_key``), from a file (``api_key_file``,
``token_file``: a Kubernetes Secret or a token written by a sidecar, rotated in
place) or from the environment (``token_env``). The last two are read when the
config is loaded, then again every ``credential_refresh_seconds`` (by the
health loop, off the request path) and at once when the backend refuses the
credential (401/403), at most once a second: an Azure Entra token lives about
an hour, and the process that renews it only rewrites the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from router.config import Backend

log = logging.getLogger("spillway.upstream")

FORCED_MIN_SECONDS = 1.0  # forced re-reads (after a refusal) at most this often


class Credential:
    __slots__ = ("_environ", "_forced_at", "_next", "backend", "env", "file", "interval", "value")

    def __init__(
        self, backend: str, cfg: Backend, environ: Mapping[str, str] | None = None
    ) -> None:
        self.backend = backend
        self._environ = os.environ if environ is None else environ
        self.file = cfg.api_key_file or cfg.token_file
        self.env = cfg.token_env
        self.interval = cfg.credential_refresh_seconds
        self.value: str | None = cfg.api_key.get_secret_value() if cfg.api_key else None
        self._next = 0.0
        self._forced_at = float("-inf")
        if self.renewable:
            self.value = self._read()

    @property
    def renewable(self) -> bool:
        return self.file is not None or self.env is not None

    @property
    def source(self) -> str:
        if self.file is not None:
            return f"file {self.file}"
        if self.env is not None:
            return f"environment variable {self.env}"
        return "the config"

    def _read(self) -> str | None:
        if self.env is not None:
            return self._environ.get(self.env) or None
        assert self.file is not None
        try:
            text = Path(self.file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning(
                "backend %s: cannot read its credential from %s (%s); keeping the last one",
                self.backend, self.file, getattr(exc, "strerror", None) or type(exc).__name__,
            )  # fmt: skip
            return self.value
        return text or self.value

    def refresh(self, now: float, *, force: bool = False) -> bool:
        """Read again when due (or ``force``d); True when the value changed."""
        if not self.renewable:
            return False
        if force:
            if now - self._forced_at < FORCED_MIN_SECONDS:
                return False
            self._forced_at = now
        elif now < self._next:
            return False
        self._next = now + self.interval
        value = self._read()
        if value == self.value:
            return False
        self.value = value
        log.info("backend %s: credential renewed from %s", self.backend, self.source)
        return True
