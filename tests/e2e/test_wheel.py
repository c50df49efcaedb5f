"""The wheel the Docker image ships, built from exactly the files the Dockerfile copies: it has the
compiled C extension, and ``promptstamp-relay demo`` works from a plain (non-editable) install of
it, outside any checkout (what the images and a ``pip install`` get).

No Docker here: the build context is rebuilt in a temporary directory from the Dockerfile's
``COPY`` lines and ``.dockerignore``, and ``pip wheel . --no-deps`` runs in it as the build stage
does.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _build_stage() -> str:
    text = DOCKERFILE.read_text()
    (stage,) = [part for part in re.split(r"^(?=FROM\s)", text, flags=re.M)
                if re.match(r"FROM\s+\S+\s+AS\s+build\b", part, re.I)]
    return stage


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(p, pattern[3:]) for p in parts):
                return True
        elif fnmatch.fnmatch(rel, pattern) or any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern)
                                                  for i in range(len(parts))):
            return True
    return False


def build_context(dest: Path) -> list[str]:
    """Copy what the build stage's COPY lines name, minus .dockerignore, into ``dest``, with
    Docker's semantics: a directory's contents go to the target; files into a target ending in
    ``/`` (or given several at once) keep their names."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied: list[str] = []
    for line in re.findall(r"^COPY\s+(?!--)(.+)$", _build_stage(), re.M):
        *sources, target = line.split()
        target_path = dest / target.removeprefix("./").rstrip("/")
        into_dir = target.endswith("/") or len(sources) > 1
        for source in sources:
            src = ROOT / source
            if src.is_file():
                pairs = [(src, target_path / src.name if into_dir else target_path)]
            else:
                pairs = [(f, target_path / f.relative_to(src)) for f in sorted(src.rglob("*")) if f.is_file()]
            for path, out in pairs:
                rel = path.relative_to(ROOT).as_posix()
                if _ignored(rel, patterns):
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)
                copied.append(rel)
    return copied


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ctx = tmp_path_factory.mktemp("docker-context")
    copied = build_context(ctx)
    assert "setup.py" in copied and "processor/promptstamp_relay/wire/_wirec.c" in copied
    assert not any(c.endswith(".so") for c in copied), "a prebuilt extension would hide a missing compiler"
    out = tmp_path_factory.mktemp("wheels")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--wheel-dir", str(out), "-q"],
                          cwd=ctx, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("promptstamp-*.whl")
    return built


def test_wheel_from_the_dockerfile_file_set_has_the_compiled_extension(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    ext = [n for n in names if re.fullmatch(r"promptstamp_relay/wire/_wirec\..*\.so", n)]
    assert ext, "the wheel has no compiled promptstamp_relay.wire._wirec"
    assert "promptstamp_relay/demo/app/__main__.py" in names  # the demo app ships in the wheel
    assert "promptstamp/testing/_langfuse.py" in names  # and the fakes it runs against
    assert not any(n.startswith(("tests/", "examples/")) for n in names)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel installed non-editable; its dependencies come from this
    environment's site-packages through a plain path entry (whose own .pth files, among them the
    editable install's, are not processed)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield venv


def _venv_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("OTEL_", "LANGFUSE_", "PROMPTSTAMP_", "PYTHONPATH", "VIRTUAL_ENV"))}


def test_installed_wheel_is_not_the_checkout_and_uses_the_extension(installed: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(installed / "bin" / "python"), "-c",
         "import promptstamp_relay, promptstamp_relay.demo.app as d; from promptstamp_relay import wire; "
         "print(promptstamp_relay.__file__); print(d.__file__); print(wire.native())"],
        capture_output=True, text=True, cwd=tmp_path, env=_venv_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    relay_file, demo_file, native = proc.stdout.split()
    for f in (relay_file, demo_file):
        assert Path(f).is_relative_to(installed) and not Path(f).is_relative_to(ROOT), f
    assert native == "True"


@pytest.mark.slow
def test_demo_runs_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    """``promptstamp-relay demo`` from the wheel, in a directory with no examples/ anywhere."""
    proc = subprocess.run([str(installed / "bin" / "promptstamp-relay"), "demo"], capture_output=True,
                          text=True, cwd=tmp_path, env=_venv_env(), timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: 5 of 5 generations linked" in proc.stdout
    assert "python -m promptstamp_relay.demo.app" in proc.stdout
