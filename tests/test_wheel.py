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
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.packaging

# What pip needs to build and install; the rest of the environment (the dev venv's paths) stays out.
LEAKY = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "REFSYNC_CONFIG")


def run(*command: str | Path, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def pip(venv_python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """This interpreter's pip (with the machine's index settings) working on another environment."""
    return run(sys.executable, "-m", "pip", "--python", venv_python, *args, "--quiet", "--disable-pip-version-check",
               cwd=cwd)


def runtime_requirements(wheel: Path) -> list[str]:
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
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path / "dist", source,
        cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("refsync-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {n.split("/")[0] for n in names} == {"refsync", wheel.name.split("-py3")[0] + ".dist-info"}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site_packages = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                             cwd=tmp_path).stdout.strip())
    pip(python, "install", *runtime_requirements(wheel), cwd=tmp_path)
    before = top_level(site_packages)
    pip(python, "install", "--no-deps", str(wheel), cwd=tmp_path)
    added = top_level(site_packages) - before
    assert added == {"refsync", wheel.name.split("-py3")[0] + ".dist-info"}

    work = tmp_path / "elsewhere"  # not the checkout: nothing can be found beside it by accident
    work.mkdir()
    refsync = venv / "bin" / "refsync"
    version = run(refsync, "--version", cwd=work).stdout.strip()
    assert re.fullmatch(r"refsync \d+\.\d+\.\d+", version), version
    assert version == "refsync " + wheel.name.split("-")[1]

    where = run(python, "-c", "import refsync, refsync.connector.cli; print(refsync.__file__)", cwd=work).stdout
    assert Path(where.strip()).is_relative_to(site_packages)

    demo = run(refsync, "demo", "--dir", work / "demo", cwd=work, timeout=240)
    assert "7 referrals" in demo.stdout and "Done." in demo.stdout, demo.stdout[-2000:]
    assert (work / "demo" / "refsync.toml").is_file()

    example = run(refsync, "init", "--example", work / "refsync.toml", cwd=work).stdout
    assert (work / "refsync.toml").read_text() == (site_packages / "refsync" / "config.example.toml").read_text()
    assert str(site_packages / "refsync" / "mappings") in example
