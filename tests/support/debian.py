"""Tools from Debian packages for the suite: from PATH, else fetched and unpacked.

``apt-get download`` + ``dpkg-deb -x`` into a cache under ``~/.cache``: no root,
nothing installed system-wide. ``.ci/run`` installs the packages when missing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path.home() / ".cache" / "spillway-tests"


def debian_tool(name: str, package: str, *, sbin: bool = False) -> str:
    """The path of executable ``name``: from PATH, else from Debian's ``package``."""
    found = shutil.which(name)
    if found is not None:
        return found
    root = CACHE / package
    unpacked = root / "usr" / ("sbin" if sbin else "bin") / name
    if not unpacked.exists():
        unpack([package], root)
    if not unpacked.exists():
        raise RuntimeError(
            f"{name} is not on PATH and Debian's {package} package could not be fetched: "
            f"install it (apt-get install -y {package}); .ci/run does it when missing"
        )
    return str(unpacked)


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
