"""Browser libraries the dashboard serves, fetched by `cai setup` from the npm registry.

Nothing is committed and nothing is loaded from a CDN: ``ensure`` downloads each pinned package
tarball once from registry.npmjs.org (what ``npm pack`` fetches, without needing Node.js),
checks it against the registry's sha512 integrity, and keeps only the files the page loads
(and the licence) under ``<cache_dir>/web/<name>-<version>/``. The dashboard serves them from
there (``asset_path``) and works offline afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from core.settings import StackSettings
from stack.processes import ServiceError

logger = logging.getLogger(__name__)

REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class WebPackage:
    name: str
    version: str
    integrity: str               # the registry's dist.integrity (sha512, base64)
    files: tuple[str, ...]       # paths inside the tarball's package/ folder to keep

    @property
    def tarball(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name}-{self.version}.tgz"


# Chart.js: canvas charts, MIT, one 210 kB file with no dependencies.
CHART_JS = WebPackage(
    "chart.js", "4.6.1",
    "sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g==",
    ("dist/chart.umd.js", "LICENSE.md"))
PACKAGES = (CHART_JS,)


def package_dir(settings: StackSettings, package: WebPackage) -> Path:
    return settings.cache_dir / "web" / f"{package.name}-{package.version}"


def asset_path(settings: StackSettings, package: WebPackage, file: str) -> Path:
    return package_dir(settings, package) / file


def ready(settings: StackSettings) -> bool:
    return all((package_dir(settings, p) / f).is_file() for p in PACKAGES for f in p.files)


def _check_integrity(package: WebPackage, data: bytes) -> None:
    algorithm, _, expected = package.integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise ServiceError(f"{package.tarball}: {algorithm} {digest} does not match the pinned "
                           f"{expected}; the download is corrupt or was altered. Fix: run "
                           "`cai setup` again; if it persists, check the registry or proxy.")


def fetch(settings: StackSettings, package: WebPackage, timeout_s: float = 120.0) -> Path:
    """Download, check and unpack ``package``'s kept files; returns its folder."""
    try:
        with urllib.request.urlopen(package.tarball, timeout=timeout_s) as response:
            data = response.read()
    except OSError as exc:
        raise ServiceError(f"dashboard assets: could not fetch {package.tarball} ({exc}). Fix: "
                           "allow access to registry.npmjs.org, or place the files under "
                           f"{package_dir(settings, package)}") from exc
    _check_integrity(package, data)
    target = package_dir(settings, package)
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for file in package.files:
            member = tar.extractfile(f"package/{file}")
            if member is None:
                raise ServiceError(f"{package.tarball} has no package/{file}")
            path = partial / file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(member.read())
    if target.exists():
        import shutil

        shutil.rmtree(target)
    partial.rename(target)
    return target


def ensure(settings: StackSettings) -> str:
    """Fetch what is missing; a `cai setup` step."""
    if ready(settings):
        return "already fetched"
    fetched = [str(fetch(settings, p)) for p in PACKAGES
               if not all((package_dir(settings, p) / f).is_file() for f in p.files)]
    return f"fetched into {', '.join(fetched)}"
