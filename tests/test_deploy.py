"""The deployment files in deploy/: the systemd unit passes `systemd-analyze verify`, the container
image builds (or, without a container tool, its definition is linted, and the test says so), and
`refsync run` tells systemd when it is ready (Type=notify)."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.adapters.profile import reference_required
from tests.conftest import ROOT
from tests.test_http import REFSYNC, start_daemon

UNIT = ROOT / "deploy" / "refsync.service"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
SYSTEMD_UNITS = Path("/usr/lib/systemd/system")


def tool_or_skip(name: str, package: str) -> str:
    """The path of a command-line tool; missing: skipped with the reason, but failed in CI, where
    `.ci/run` installs it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found (Debian package {package}; `.ci/run` installs it in CI)"
        if reference_required():
            pytest.fail(message)
        pytest.skip(message)
    return path


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> every value given (systemd allows a key more than once)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool_or_skip("systemd-analyze", "systemd")
    # A root with the unit where the README installs it, the binary it runs and the stock targets it
    # is ordered against: verify then checks the real paths of deploy/refsync.service, unchanged.
    root = tmp_path / "root"
    (root / "opt/refsync/bin").mkdir(parents=True)
    (root / "opt/refsync/bin/refsync").write_text("#!/bin/sh\n")
    (root / "opt/refsync/bin/refsync").chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin/kill")  # ExecReload (SIGHUP reloads the mapping files)
    (root / "etc/systemd/system").mkdir(parents=True)
    installed = root / "etc/systemd/system/refsync.service"
    shutil.copy(UNIT, installed)
    stock = root / "usr/lib/systemd/system"
    stock.mkdir(parents=True)
    for target in [*SYSTEMD_UNITS.glob("*.target"), *SYSTEMD_UNITS.glob("*.slice")]:
        shutil.copy(target, stock / target.name)  # follows the aliases' symlinks

    result = subprocess.run([analyze, "verify", "--man=no", f"--root={root}", str(installed)],
                            capture_output=True, text=True, timeout=60)
    # verify exits 0 on an unknown or misplaced key and only says so: any output is a finding.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_systemd_unit_runs_refsync_as_its_own_user_hardened_and_migrating_first() -> None:
    unit = unit_settings(UNIT.read_text())
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.User"] == ["refsync"]
    assert unit["Service.EnvironmentFile"] == ["-/etc/refsync/refsync.env"]
    assert unit["Service.ExecStartPre"] == ["/opt/refsync/bin/refsync --config /etc/refsync/refsync.toml init"]
    assert unit["Service.ExecStart"] == ["/opt/refsync/bin/refsync --config /etc/refsync/refsync.toml run"]
    assert unit["Service.Restart"] == ["on-failure"]
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "ReadWritePaths": "/var/lib/refsync"}.items():
        assert unit[f"Service.{key}"] == [value], key


def containerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def command_words(arguments: str) -> list[str]:
    """The words of a CMD/ENTRYPOINT, exec (JSON) form or shell form."""
    return json.loads(arguments) if arguments.startswith("[") else ["sh", "-c", arguments]


def environment(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV of a stage (``ENV A=1 B=2`` form)."""
    values: dict[str, str] = {}
    for keyword, arguments in stage:
        if keyword == "ENV":
            values.update(word.split("=", 1) for word in shlex.split(arguments) if "=" in word)
    return values


def health_command(arguments: str, env: dict[str, str]) -> list[str]:
    """The words the HEALTHCHECK runs, with the image's environment variables filled in."""
    words = command_words(arguments.split(" CMD ", 1)[-1].strip())
    for name, value in env.items():
        words = [w.replace(f"os.environ['{name}']", repr(value)).replace(f"${name}", value) for w in words]
    return words


def lint_containerfile(text: str) -> list[str]:
    """What is wrong with the image definition, checked without building it."""
    instructions = containerfile_instructions(text)
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    if not stages:
        return ["no FROM instruction"]
    final = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    last_stage = instructions[final:]
    problems = []
    if not stages or not stages[-1].startswith("python:3.11-slim"):
        problems.append(f"the image must be based on python:3.11-slim, it is {stages[-1:]}")
    users = [args for keyword, args in last_stage if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"the image must run as a non-root USER, it has {users}")
    checks = [health_command(args, environment(last_stage)) for keyword, args in last_stage if keyword == "HEALTHCHECK"]
    if not checks or "/healthz" not in " ".join(checks[-1]) or "urllib" not in " ".join(checks[-1]):
        problems.append(f"a HEALTHCHECK on /healthz with Python's urllib is missing: {checks}")
    commands = [command_words(args) for keyword, args in last_stage if keyword in ("ENTRYPOINT", "CMD")]
    words = " ".join(" ".join(c) for c in commands)
    if "refsync run" not in words:
        problems.append(f"ENTRYPOINT/CMD must run `refsync run`: {commands}")
    if not any(keyword == "VOLUME" and "/var/lib/refsync" in args for keyword, args in last_stage):
        problems.append("the ledger's folder /var/lib/refsync must be a VOLUME")
    if not any(keyword == "RUN" and "pip install" in args and ".whl" in args for keyword, args in last_stage):
        problems.append("the image must install refsync from its wheel")
    return problems


def usable_container_tool() -> str | None:
    """docker, podman or buildah, when one is installed and can build here (docker needs its daemon)."""
    for name in ("podman", "buildah", "docker"):
        path = shutil.which(name)
        if path and subprocess.run([path, "info"], capture_output=True, timeout=30).returncode == 0:
            return path
    return None


def test_containerfile_is_a_small_non_root_image_running_refsync_with_a_health_check() -> None:
    """Checked on every machine, container tool or not: the definition itself."""
    assert lint_containerfile(CONTAINERFILE.read_text()) == []


def test_container_image_builds() -> None:
    tool = usable_container_tool()
    if tool is None:
        # Said in the test report (-ra), so the lint above is never taken for a build.
        pytest.skip("no usable docker/podman/buildah here (docker needs its daemon): deploy/Containerfile was only "
                    "linted (test_containerfile_is_a_small_non_root_image_...), not built")
    verb = ["bud"] if tool.endswith("buildah") else ["build"]
    result = subprocess.run([tool, *verb, "-f", str(CONTAINERFILE), "-t", "refsync:test", str(ROOT)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("original, defect, expected", [
    ("USER refsync:refsync", "USER root", "non-root USER"),
    ("/healthz", "/", "HEALTHCHECK on /healthz"),
    ("exec refsync run", "exec refsync sync --once", "must run `refsync run`"),
    ('VOLUME ["/var/lib/refsync"]', "", "must be a VOLUME"),
])
def test_the_containerfile_lint_finds_what_it_checks(original: str, defect: str, expected: str) -> None:
    text = CONTAINERFILE.read_text()
    assert original in text
    assert any(expected in problem for problem in lint_containerfile(text.replace(original, defect)))


def test_refsync_run_tells_systemd_it_is_ready_then_stopping_and_the_image_health_check_sees_it(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A short folder: an AF_UNIX path is at most 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="sdn-"))
    path = folder / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    daemon, port = start_daemon(sqlite_url, tmp_path)
    try:
        assert listener.recv(4096) == b"READY=1"
        # The image's HEALTHCHECK command, as the container runtime would run it, against this daemon.
        stage = containerfile_instructions(CONTAINERFILE.read_text())
        check = health_command(next(a for k, a in stage if k == "HEALTHCHECK"),
                               {**environment(stage), "REFSYNC_HEALTHZ_URL": f"http://127.0.0.1:{port}/healthz"})
        assert check[0] == "python"
        assert subprocess.run([sys.executable, *check[1:]], capture_output=True, timeout=30).returncode == 0
        daemon.send_signal(signal.SIGTERM)
        assert listener.recv(4096) == b"STOPPING=1"
        assert daemon.wait(timeout=30) == 0
        assert subprocess.run([sys.executable, *check[1:]], capture_output=True, timeout=30).returncode != 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        listener.close()
        shutil.rmtree(folder)


def test_the_unit_runs_commands_refsync_has() -> None:
    """The unit's command lines parse (no misspelt subcommand or option): each with --help exits 0."""
    unit = unit_settings(UNIT.read_text())
    for line in (unit["Service.ExecStartPre"][0], unit["Service.ExecStart"][0]):
        words = shlex.split(line)[1:]
        result = subprocess.run([REFSYNC, *words, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
