"""Debian packages unpacked into a cache for the suite (``apt-get download`` +
``dpkg-deb -x``: no root, nothing installed system-wide)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def unpack(packages: list[str], cache: Path) -> None:
    """Fetch ``packages`` and unpack them under ``cache``; quietly nothing without apt."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return
    download = Path(tempfile.mkdtemp(prefix="spillway-deb-"))
    try:
        subprocess.run(["apt-get", "download", *packages], cwd=download,
                       capture_output=True, timeout=600, check=False)  # fmt: skip
        for deb in download.glob("*.deb"):
            cache.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(cache)],
                           capture_output=True, timeout=300, check=True)  # fmt: skip
    finally:
        shutil.rmtree(download, ignore_errors=True)
