"""`[smtp]`: `refsync partners invite` and `refsync users add` also email the one-time link, through
a real SMTP conversation with a small receiver run here (STARTTLS with a private CA, AUTH PLAIN),
and still print the link as the last line; a failed email leaves the link usable (exit 1); the
password never reaches the output or a log line."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from refsync.adapters.sandbox.tls import make_tls
from refsync.connector.cli import cli
from refsync.connector.config import parse_config
from refsync.errors import ConfigError

PASSWORD = "smtp-secret-7f3a9c21be"


@dataclass
class Receiver:
    """A minimal SMTP server (RFC 5321 subset, STARTTLS, AUTH PLAIN) in a thread of its own."""

    tls: ssl.SSLContext | None
    user: str = "refsync"
    password: str = PASSWORD
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)  # (user, over TLS)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        assert ready.wait(5)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        secure, sender, recipients = False, "", []

        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await say("220 receiver ESMTP")
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            verb, _, rest = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                offers = ["receiver", *(["STARTTLS"] if self.tls and not secure else []),
                          *(["AUTH PLAIN"] if secure or not self.tls else []), "8BITMIME"]
                for i, offer in enumerate(offers):
                    await say(f"250{'-' if i < len(offers) - 1 else ' '}{offer}")
            elif verb == "STARTTLS" and self.tls:
                await say("220 go ahead")
                await writer.start_tls(self.tls)
                secure = True
            elif verb == "AUTH":
                _, user, password = base64.b64decode(rest.split()[1]).decode().split("\0")
                ok = (user, password) == (self.user, self.password)
                self.logins.append((user, secure))
                await say("235 accepted" if ok else "535 5.7.8 authentication failed")
            elif verb == "MAIL":
                sender, recipients = rest.partition(":")[2].strip("<> "), []
                await say("250 ok")
            elif verb == "RCPT":
                address = rest.partition(":")[2].strip("<> ")
                if address.endswith("@refused.example"):
                    await say("550 5.1.1 no such mailbox")
                else:
                    recipients.append(address)
                    await say("250 ok")
            elif verb == "DATA":
                await say("354 end with .")
                body = b""
                while (chunk := await reader.readline()) not in (b".\r\n", b""):
                    body += chunk[1:] if chunk.startswith(b"..") else chunk
                self.messages.append(message_from_bytes(body, policy=policy.default))  # type: ignore[arg-type]
                self.envelopes.append((sender, recipients))
                await say("250 queued")
            elif verb == "QUIT":
                await say("221 bye")
                break
            else:
                await say("250 ok")
        writer.close()


@pytest.fixture
def ledger_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_tls(tmp_path / "tls")


@pytest.fixture
def receiver(tls_files: tuple[Path, Path, Path]) -> Iterator[Receiver]:
    _ca, cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    running = Receiver(context)
    running.start()
    yield running
    running.stop()


def config(tmp_path: Path, ledger_url: str, smtp: str) -> Path:
    path = tmp_path / "refsync.toml"
    path.write_text(f'[ledger]\nurl = "{ledger_url}"\n[http]\nlisten = "127.0.0.1:8787"\n[smtp]\n{smtp}')
    return path


def run(path: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--debug", "--config", str(path), *args], env={"T_SMTP_PASSWORD": PASSWORD})


def test_the_invitation_link_is_emailed_through_starttls_and_still_printed_last(
        ledger_url: str, tmp_path: Path, receiver: Receiver, tls_files: tuple[Path, Path, Path]) -> None:
    smtp = (f'host = "127.0.0.1"\nport = {receiver.port}\nusername = "refsync"\npassword = "env:T_SMTP_PASSWORD"\n'
            f'from = "partners@corp.example"\nca_bundle = "{tls_files[0]}"\n')
    path = config(tmp_path, ledger_url, smtp)
    invited = run(path, "partners", "invite", "acme", "Ana@Acme.example", "--create")
    assert invited.exit_code == 0, invited.output
    link = invited.stdout.splitlines()[-1]
    assert link.startswith("http://127.0.0.1:8787/welcome/")
    assert f"Emailed to ana@acme.example through 127.0.0.1:{receiver.port}" in invited.stdout
    [mail] = receiver.messages
    assert (mail["From"], mail["To"], mail["Subject"]) == ("partners@corp.example", "ana@acme.example",
                                                           "Your link to the partner portal")
    body = mail.get_body().get_content()  # type: ignore[union-attr]
    assert link in body and "partner portal of acme" in body
    assert receiver.envelopes == [("partners@corp.example", ["ana@acme.example"])]
    assert receiver.logins == [("refsync", True)]  # signed in only once the connection was encrypted
    added = run(path, "users", "add", "boss@corp.example", "--role", "admin", "--json")
    assert added.exit_code == 0, added.output
    shown = json.loads(added.stdout)
    assert shown["emailed"] is True and shown["url"] in receiver.messages[-1].get_body().get_content()  # type: ignore[union-attr]
    assert receiver.messages[-1]["Subject"] == "Your link to the program dashboard"
    for result in (invited, added):
        assert PASSWORD not in result.stdout and PASSWORD not in result.stderr
    assert "link emailed" in invited.stderr  # the debug log ran, and kept the password out


def test_a_failed_email_leaves_the_printed_link_usable_and_exits_1(
        ledger_url: str, tmp_path: Path, receiver: Receiver, tls_files: tuple[Path, Path, Path]) -> None:
    base = (f'host = "127.0.0.1"\nport = {receiver.port}\nusername = "refsync"\nfrom = "partners@corp.example"\n'
            f'ca_bundle = "{tls_files[0]}"\n')
    (tmp_path / "wrong").write_text("not-the-password")
    path = config(tmp_path, ledger_url, base + f'password = "file:{tmp_path / "wrong"}"\n')
    refused = run(path, "partners", "invite", "acme", "ana@acme.example", "--create")
    assert refused.exit_code == 1
    assert refused.stdout.splitlines()[-1].startswith("http://127.0.0.1:8787/welcome/")
    assert f"127.0.0.1:{receiver.port} refused the sign-in of refsync (535)" in refused.stderr
    assert "send the printed link yourself" in refused.stderr and "not-the-password" not in refused.output
    assert receiver.messages == []
    # The printed link is the one that works: the new invitation did not spoil it.
    untrusted = config(tmp_path, ledger_url, base.replace(f'ca_bundle = "{tls_files[0]}"\n', "") +
                       'password = "env:T_SMTP_PASSWORD"\n')
    result = run(untrusted, "users", "add", "boss@corp.example", "--role", "viewer", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["emailed"] is False
    assert "TLS failed" in result.stderr and "smtp.ca_bundle" in result.stderr
    gone = config(tmp_path, ledger_url, 'host = "127.0.0.1"\nport = 9\nstarttls = false\nfrom = "a@corp.example"\n')
    result = run(gone, "users", "add", "vic@corp.example", "--role", "viewer")
    assert result.exit_code == 1 and "cannot reach 127.0.0.1:9" in result.stderr
    assert result.stdout.splitlines()[-1].startswith("http://127.0.0.1:8787/welcome/")


def test_smtp_config_problems_name_the_key_and_the_fix() -> None:
    with pytest.raises(ConfigError) as problems:
        parse_config('[smtp]\nhost = "mail.example"\npassword = "hunter2-literal"\nfrom = "nobody"\n'
                     'starttls = false\n')
    text = "\n".join(problems.value.problems)
    assert "smtp.password" in text and "literal secrets are not allowed" in text
    assert "smtp.from" in text and "must be an email address" in text
    with pytest.raises(ConfigError) as unencrypted:
        parse_config('[smtp]\nhost = "mail.example"\nusername = "u"\npassword = "env:X"\nfrom = "a@b.example"\n'
                     'starttls = false\n')
    assert "would send the password unencrypted" in "\n".join(unencrypted.value.problems)
    ok = parse_config('[smtp]\nhost = "mail.example"\nfrom = "partners@corp.example"\n')
    assert ok.smtp is not None and (ok.smtp.port, ok.smtp.starttls, ok.smtp.sender) == (
        587, True, "partners@corp.example")
