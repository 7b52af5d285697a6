"""The container image's wheel carries the compiled fast path (monitor.ingest._fastdecode).

There is no Docker engine here, so this builds the wheel the way the Dockerfile's
builder stage does: the build context is only what that stage COPYs (minus what
.dockerignore leaves out) and its RUN lines run as written, with /wheels and
/tmp/check moved to temporary directories. The wheel must hold the extension,
import from a fresh install target, and the build output must carry no
deprecation warning about the project's own metadata (pyproject.toml, setup.py).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# what setuptools / pip print when the metadata uses a deprecated form (the
# `license = { text = ... }` table printed a BuildBackendWarning "... is deprecated")
WARNING_MARKERS = ("SetuptoolsDeprecationWarning", "BuildBackendWarning",
                   "SetuptoolsWarning", "deprecated")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, args = full.partition(" ")
        out.append((word.upper(), args.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(DOCKERFILE.read_text()):
        if ins[0] == "FROM":
            stages.append([])
        stages[-1].append(ins)
    return stages


def _ignore_patterns() -> list[str]:
    if not DOCKERIGNORE.is_file():
        return []
    lines = (ln.strip() for ln in DOCKERIGNORE.read_text().splitlines())
    return [ln.rstrip("/") for ln in lines if ln and not ln.startswith(("#", "!"))]


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``rel`` (or a folder above it) out of the context."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        for pat in patterns:
            if pat.startswith("**/"):
                if any(fnmatch.fnmatchcase("/".join(parts[j:i]), pat[3:]) for j in range(i)):
                    return True
            elif fnmatch.fnmatchcase(prefix, pat):
                return True
    return False


def _copy_context(copies: list[str], dest_root: Path) -> None:
    """Do the builder stage's COPY lines (relative to its WORKDIR) into ``dest_root``."""
    patterns = _ignore_patterns()
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        *sources, dest = words
        target = dest_root / dest
        for src in sources:
            assert not _ignored(src, patterns), f".dockerignore leaves out COPY source {src}"
            path = ROOT / src
            if path.is_dir():
                for file in sorted(path.rglob("*")):
                    rel = file.relative_to(ROOT).as_posix()
                    if file.is_file() and not _ignored(rel, patterns):
                        out = target / file.relative_to(path)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(file, out)
            else:
                out = target / path.name if dest.endswith("/") else target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)


def test_dockerfile_builds_the_wheel_in_a_compiler_stage() -> None:
    stages = _stages()
    assert len(stages) >= 2, "the Dockerfile is a multi-stage build (builder + runtime)"
    builder, runtime = stages[0], stages[-1]
    builder_from, runtime_from = builder[0][1], runtime[0][1]
    assert re.match(r"python:3\.11[-\w.]*\s+AS\s+builder$", builder_from, re.I), builder_from
    assert "slim" not in builder_from, "the builder needs gcc (python:3.11, not -slim)"
    assert runtime_from.startswith("python:3.11-slim"), runtime_from
    runs = " && ".join(args for word, args in builder if word == "RUN")
    assert "pip wheel --no-deps -w /wheels ." in runs
    assert "_fastdecode" in runs, "the builder must fail when the extension is missing"
    assert ("COPY", "--from=builder /wheels /tmp/wheels") in runtime
    assert ("USER", "10001") in runtime
    assert ("ENTRYPOINT", '["driftgate"]') in runtime


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = _ignore_patterns()
    for rel in (".venv/bin/python", ".git/HEAD", "build/lib/x.py", "driftgate.egg-info/PKG-INFO",
                "monitor/__pycache__/codec.cpython-311.pyc", ".mypy_cache/x",
                ".pytest_cache/x", ".ruff_cache/x",
                "monitor/ingest/_fastdecode.cpython-311-x86_64-linux-gnu.so"):
        assert _ignored(rel, patterns), rel
    for rel in ("setup.py", "pyproject.toml", "README.md", "monitor/ingest/_native/fastdecode.c",
                "third_party/yyjson/yyjson.h", "monitor/ingest/_fastdecode.pyi",
                "monitor/py.typed"):
        assert not _ignored(rel, patterns), rel


def test_builder_stage_wheel_has_the_fast_path(tmp_path: Path) -> None:
    builder = _stages()[0]
    workdir = next(args for word, args in builder if word == "WORKDIR")
    context = tmp_path / workdir.lstrip("/")
    context.mkdir(parents=True)
    _copy_context([args for word, args in builder if word == "COPY"], context)
    assert (context / "setup.py").is_file(), "the builder stage must COPY setup.py"
    assert sorted(p.name for p in (context / "monitor" / "ingest" / "_native").glob("*.c")), \
        "the builder stage must COPY monitor/ingest/_native (the C sources)"
    assert (context / "third_party" / "yyjson" / "yyjson.c").is_file(), \
        "the builder stage must COPY third_party (the vendored yyjson)"
    assert not list(context.rglob("*.so")), "a stale in-tree build is in the context"

    wheels, check = tmp_path / "wheels", tmp_path / "check"
    bindir = Path(sys.executable).parent
    if not (bindir / "pip").exists():
        pytest.skip(f"no pip next to {sys.executable}")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
           "PIP_NO_CACHE_DIR": "1", "PYTHONPATH": ""}
    output = []
    for word, args in builder:
        if word != "RUN":
            continue
        command = args.replace("/tmp/check", str(check)).replace("/wheels", str(wheels))
        proc = subprocess.run(["bash", "-c", command], cwd=context, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        output.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"RUN {command}\n{output[-1][-5000:]}"

    (wheel,) = wheels.glob("driftgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if re.fullmatch(r"monitor/ingest/_fastdecode[.\w-]*\.so", n)], names
    assert "monitor/py.typed" in names
    assert not [n for n in names if n.startswith("monitor/ingest/_native/")], \
        "C sources in the wheel"

    noisy = [line for line in "\n".join(output).splitlines()
             if any(m in line for m in WARNING_MARKERS)]
    assert not noisy, "the wheel build warns about the project's metadata:\n" + "\n".join(noisy)

    # a fresh install target of that wheel alone (no in-tree monitor/ on the path)
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(wheel)], check=True, timeout=300)
    probe = ("import monitor.ingest._fastdecode as f; "
             "assert callable(f.decode_predictions) and callable(f.decode_labels); "
             "print(f.__file__)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(target)},
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(target), proc.stdout
