"""Emailing a one-time sign-in link through the SMTP server of ``[smtp]`` (stdlib smtplib).

The link is always printed as well: an email that fails is reported, never the only copy. The
password is resolved only here, for the login, and is in :meth:`Config.secrets`, so the log
redactor masks it should a server ever echo it back.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from refsync.connector.config import SmtpConfig
from refsync.connector.logs import get_logger
from refsync.errors import RefsyncError

log = get_logger("refsync.mail")


class MailNotSent(RefsyncError):
    """The SMTP server could not be reached or refused the email."""


def link_message(sender: str, to: str, subject: str, lines: list[str], url: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content("\n".join([*lines, "", url, ""]))
    return message


def send(smtp: SmtpConfig, base_dir: Path, message: EmailMessage) -> None:
    """Deliver ``message`` through the configured server; MailNotSent says why it was not."""
    where = f"{smtp.host}:{smtp.port}"
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_seconds) as server:
            server.ehlo()
            if smtp.starttls:
                ca = str(base_dir / Path(smtp.ca_bundle).expanduser()) if smtp.ca_bundle else None
                server.starttls(context=ssl.create_default_context(cafile=ca))
                server.ehlo()
            if smtp.username is not None and smtp.password is not None:
                server.login(smtp.username, smtp.password.resolve("smtp.password", base_dir))
            server.send_message(message)
    except smtplib.SMTPAuthenticationError as exc:
        raise MailNotSent(f"{where} refused the sign-in of {smtp.username} ({exc.smtp_code}); check smtp.username "
                          "and the secret smtp.password points at") from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise MailNotSent(f"{where} does not offer STARTTLS or sign-in ({exc}); check smtp.port and "
                          "smtp.starttls") from exc
    except smtplib.SMTPResponseException as exc:
        reply = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise MailNotSent(f"{where} refused the email: {exc.smtp_code} {reply[:200]}") from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise MailNotSent(f"{where} refused the recipient {', '.join(exc.recipients)}") from exc
    except ssl.SSLError as exc:
        raise MailNotSent(f"{where}: TLS failed ({exc.reason}); set smtp.ca_bundle if the server has a private "
                          "certificate") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise MailNotSent(f"cannot reach {where} ({type(exc).__name__}: {exc}); check smtp.host and smtp.port")\
            from exc
    log.info("link emailed", to=message["To"], server=where)
