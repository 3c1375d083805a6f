"""The real agent CLIs from the npm registry, installed by the suite on first use.

``npm install --prefix ~/.cache/spillway-tests/npm/<name>-<version>``: nothing is
installed system-wide, and a second run finds the cache. A pinned version keeps the
wire format the tests see the same from run to run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CACHE = Path.home() / ".cache" / "spillway-tests" / "npm"


def ensure_cli(package: str, version: str, bin_name: str) -> Path:
    """The path of ``bin_name`` from ``package@version``, installing it when missing."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to install the agent CLIs (Debian package nodejs)")
    prefix = CACHE / f"{package.replace('/', '_').lstrip('@')}-{version}"
    binary = prefix / "node_modules" / ".bin" / bin_name
    if not binary.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
             "--loglevel=error", f"{package}@{version}"],
            check=True, timeout=600,
        )  # fmt: skip
    return binary
