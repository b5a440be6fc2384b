"""The built wheel, installed into a fresh venv as a user would (`pip install refsync-*.whl`), works
on its own: `refsync --version`, `refsync demo` (the sample referrals, the default mappings and the
example config come from inside the package) and `import refsync`, and it adds nothing to
site-packages but `refsync` and its dist-info.

Slower than the other tests (a wheel build and the runtime dependencies installed from the package
index pip is configured with), and never skipped: a machine that cannot build or install the wheel
fails it, since that is what a user would meet.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.packaging

# What pip needs to build and install; the rest of the environment (the dev venv's paths) stays out.
LEAKY = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "REFSYNC_CONFIG")


def run(*command: str | Path, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return finished(start(*command, cwd=cwd), command, timeout)


def start(*command: str | Path, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    return subprocess.Popen([str(c) for c in command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen[str], command: tuple[str | Path, ...], timeout: float = 240,
             ) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, f"{command} exited {process.returncode}:\n{stdout[-4000:]}\n{stderr[-4000:]}"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def pip(venv_python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """This interpreter's pip (with the machine's index settings) working on another environment;
    --no-compile: byte-compiling the dependencies' thousands of modules is most of an install's time."""
    return run(sys.executable, "-m", "pip", "--python", venv_python, *args, "--quiet", "--no-compile",
               "--disable-pip-version-check", cwd=cwd)


def requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist without the extras (what `pip install refsync` installs)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def top_level(site_packages: Path) -> set[str]:
    return {p.name for p in site_packages.iterdir() if p.name != "__pycache__"}


def test_the_wheel_installs_alone_and_runs_the_demo_from_inside_the_package(tmp_path: Path) -> None:
    # Built from a copy of the checkout: what the repository holds, not what lies around in it.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".demo", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests"))
    # The wheel builds while the dependencies install (the same list, from pyproject.toml): half the wait.
    build_command = (sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path / "dist",
                     source)
    build = start(*build_command, cwd=tmp_path)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site_packages = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                             cwd=tmp_path).stdout.strip())
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pip(python, "install", *dependencies, cwd=tmp_path)
    finished(build, build_command)

    [wheel] = (tmp_path / "dist").glob("refsync-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {n.split("/")[0] for n in names} == {"refsync", wheel.name.split("-py3")[0] + ".dist-info"}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert len(requirements(wheel)) == len(dependencies)
    before = top_level(site_packages)
    pip(python, "install", "--no-deps", str(wheel), cwd=tmp_path)
    added = top_level(site_packages) - before
    assert added == {"refsync", wheel.name.split("-py3")[0] + ".dist-info"}

    work = tmp_path / "elsewhere"  # not the checkout: nothing can be found beside it by accident
    work.mkdir()
    refsync = venv / "bin" / "refsync"
    # Four commands of a new user, at once (each pays the first imports).
    commands: dict[str, tuple[str | Path, ...]] = {
        "version": (refsync, "--version"),
        "import": (python, "-c", "import refsync, refsync.connector.cli; print(refsync.__file__)"),
        "demo": (refsync, "demo", "--dir", work / "demo"),
        "example": (refsync, "init", "--example", work / "refsync.toml"),
    }
    running = {name: start(*command, cwd=work) for name, command in commands.items()}
    out = {name: finished(process, commands[name]).stdout for name, process in running.items()}

    version = out["version"].strip()
    assert re.fullmatch(r"refsync \d+\.\d+\.\d+", version), version
    assert version == "refsync " + wheel.name.split("-")[1]
    assert Path(out["import"].strip()).is_relative_to(site_packages)
    assert "== Summary" in out["demo"] and "7 referrals (" in out["demo"], out["demo"][-2000:]
    assert (work / "demo" / "refsync.toml").is_file()
    assert (work / "refsync.toml").read_text() == (site_packages / "refsync" / "config.example.toml").read_text()
    assert str(site_packages / "refsync" / "mappings") in out["example"]
