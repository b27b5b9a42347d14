"""Run the ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel (CPU, or GPU instances).

Only the python backend ships in the wheel. Its stub must link the venv's libpython,
so the venv's ``bin`` goes first on PATH and ``LD_LIBRARY_PATH`` points at the
interpreter's LIBDIR (otherwise Debian's libpython is picked and the stub fails).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

PY_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"


class TritonNotInstalled(RuntimeError):
    pass


def pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise TritonNotInstalled(
            "triton: the nvidia-pytriton package is not installed. Fix: run `cai setup`."
        )
    return Path(spec.origin).parent / "tritonserver"


def binary() -> Path:
    path = pytriton_root() / "bin" / "tritonserver"
    if not path.exists():
        raise TritonNotInstalled(f"triton: {path} is missing. Fix: reinstall "
                                 "nvidia-pytriton==0.7.0.")
    return path


def backend_dir(cache_dir: Path) -> Path:
    """Where the backend folder of links lives: prepared once per cache folder."""
    return Path(cache_dir) / "triton-backends"


def build_backend_dir(target: Path) -> Path:
    """Create ``target/python`` with links to the wheel's python backend and stub (idempotent)."""
    root = pytriton_root()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    backend, stubs = root / "backends" / "python", root / "python_backend_stubs" / PY_TAG
    sources = {
        "libtriton_python.so": backend / "libtriton_python.so",
        "triton_python_backend_utils.py": backend / "triton_python_backend_utils.py",
        "triton_python_backend_stub": stubs / "triton_python_backend_stub",
    }
    for name, source in sources.items():
        if not source.exists():
            raise TritonNotInstalled(
                f"triton: {source} is missing (python {PY_TAG} stub). Fix: use Python 3.11 "
                "and reinstall nvidia-pytriton==0.7.0."
            )
        link = python_dir / name
        if link.is_symlink() or link.exists():
            if link.resolve() == source.resolve():
                continue
            link.unlink()
        link.symlink_to(source)
    return target


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, str(pytriton_root() / "external_libs"),
                    env.get("LD_LIBRARY_PATH", "")) if p
    )
    # Keep each backend process from oversubscribing two cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def command(
    repository: Path, backend_dir: Path, http_port: int, grpc_port: int, metrics_port: int,
    host: str = "127.0.0.1", load: tuple[str, ...] = ("*",),
) -> list[str]:
    return [
        str(binary()),
        f"--model-repository={repository.resolve()}",
        f"--backend-directory={backend_dir.resolve()}",
        "--model-control-mode=explicit",
        *(f"--load-model={name}" for name in load),
        "--disable-auto-complete-config",
        "--exit-timeout-secs=5",
        "--strict-readiness=true",
        f"--http-address={host}", f"--http-port={http_port}",
        f"--grpc-address={host}", f"--grpc-port={grpc_port}",
        f"--metrics-address={host}", f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--log-verbose=0",
    ]
