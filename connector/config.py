"""Load and validate refsync's TOML config, reporting every problem at once.

Each problem names the file, the line (when the key is in the file), the key path and the fix.
Unknown keys are refused. Secrets are references (``env:NAME`` or ``file:PATH``), resolved only
when a command needs them, and a literal secret in the file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from refsync.adapters.retrying import CallPolicy, RetrySettings
from refsync.connector.attribution import Policy
from refsync.connector.tomlfile import did_you_mean, keys_at, line_of
from refsync.errors import ConfigError
from refsync.shipped import shipped_path

CONFIG_ENV = "REFSYNC_CONFIG"
SECRET_SCHEMES = ("env:", "file:")


class SecretRef(str):
    """A reference to a secret (``env:NAME`` or ``file:PATH``); ``str()`` never shows the value."""

    def resolve(self, key_path: str, base_dir: Path | None = None) -> str:
        """The secret's value; a ConfigError naming ``key_path`` and where we looked if absent."""
        scheme, _, target = self.partition(":")
        if scheme == "env":
            value = os.environ.get(target)
            if not value:
                raise ConfigError(
                    f"{key_path}: environment variable {target} is not set or empty "
                    f"(looked for it because the config says {key_path} = \"{self}\"); "
                    f"export {target}=... before starting refsync"
                )
            return value
        path = Path(target).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{key_path}: cannot read secret file {path} ({exc.strerror}); "
                "create it with the secret as its only content, readable by refsync"
            ) from exc
        if not value:
            raise ConfigError(f"{key_path}: secret file {path} is empty; put the secret in it")
        return value


def _secret(value: Any) -> SecretRef | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string reference such as \"env:NAME\" or \"file:/path\"")
    if not value.startswith(SECRET_SCHEMES) or value in SECRET_SCHEMES:
        raise ValueError(
            "literal secrets are not allowed in the config file; put the value in an environment "
            "variable and write \"env:NAME\", or in a file readable only by refsync and write "
            "\"file:/path/to/secret\""
        )
    return SecretRef(value)


Secret = Annotated[SecretRef | None, BeforeValidator(_secret), Field(default=None)]


def _http_url(value: str) -> str:
    """An http(s) URL with a host; one without a scheme is refused with the fix (a bare host name
    would otherwise fail only at the first request, as a relative path)."""
    if re.match(r"^https?://[^/\s?#]+", value):
        return value
    if "://" not in value:
        raise ValueError(f"'{value}' has no scheme; write it as \"https://{value.lstrip('/')}\"")
    raise ValueError(f"'{value}' is not an http(s) URL; write it like \"https://host\"")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class LedgerConfig(_Strict):
    url: str = "sqlite:///refsync.db"

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, value: str) -> str:
        if value.startswith(SECRET_SCHEMES):
            return value
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            hint = f" (for a SQLite file: \"sqlite:///{value}\")" if "://" not in value else ""
            raise ValueError(
                f"must be a SQLAlchemy URL starting with sqlite:/// or postgresql+psycopg://{hint}"
            )
        if re.match(r"^\w+(\+\w+)?://[^/@:]+:[^/@]+@", value):
            raise ValueError(
                "the URL carries a password; set url = \"env:REFSYNC_LEDGER_URL\" and put the URL "
                "in that variable, or use a .pgpass file"
            )
        return value


class AttributionConfig(_Strict):
    model: Literal["first_touch", "last_touch"] = "first_touch"
    expire_after_days: int = Field(default=90, ge=1, le=3650)
    on_duplicate: Literal["flag", "decline"] = "flag"
    window_days: int = Field(default=365, ge=1, le=3650)
    policy_version: str | None = None

    def policy(self) -> Policy:
        """The attribution policy these settings describe, with its version."""
        return Policy(self.model, self.on_duplicate, self.window_days, self.version())

    def version(self) -> str:
        """The policy version recorded with each credit: explicit, or derived from the settings."""
        if self.policy_version:
            return self.policy_version
        settings = self.model_dump(exclude={"policy_version"})
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        return f"auto-{digest}"


class SalesforceConfig(_Strict):
    instance_url: HttpUrl
    ca_bundle: str | None = None
    session_id: Secret
    username: str | None = None
    password: Secret
    security_token: Secret
    domain: str | None = None
    client_id: str | None = None
    client_secret: Secret
    api_version: str = "59.0"
    mapping: str = "mappings/salesforce.toml"
    daily_call_budget: int | None = Field(default=None, ge=1)
    daily_budget_share: float | None = Field(default=None, gt=0, le=1)

    @field_validator("api_version")
    @classmethod
    def _collection_upserts(cls, value: str) -> str:
        # refsync writes through sObject Collections upserts (PATCH composite/sobjects/{Object}/{Field}),
        # which Salesforce serves from API version 46.0 (REST API Developer Guide, "Upsert Records
        # Using sObject Collections").
        match = re.fullmatch(r"v?(\d+)\.0", value.strip())
        if match is None:
            raise ValueError(f"'{value}' is not a Salesforce API version; write it like \"59.0\"")
        if int(match.group(1)) < 46:
            raise ValueError(f"API version {value} has no collection upserts, which refsync writes with; "
                             "use 46.0 or later (e.g. \"59.0\")")
        return value.strip().lstrip("v")

    @model_validator(mode="after")
    def _one_auth(self) -> SalesforceConfig:
        ways = [
            self.session_id is not None,
            self.username is not None or self.password is not None,
            self.client_id is not None or self.client_secret is not None,
        ]
        if sum(ways) != 1:
            raise ValueError(
                "set exactly one way to authenticate: session_id; or username + password "
                "(+ security_token); or client_id + client_secret (OAuth client credentials)"
            )
        if ways[1] and (self.username is None or self.password is None):
            raise ValueError("username and password go together; set both")
        if ways[2] and (self.client_id is None or self.client_secret is None):
            raise ValueError("client_id and client_secret go together; set both")
        return self


class HubSpotConfig(_Strict):
    base_url: HttpUrl = "https://api.hubapi.com"
    access_token: Annotated[SecretRef, BeforeValidator(_secret)]
    mapping: str = "mappings/hubspot.toml"
    daily_call_budget: int | None = Field(default=None, ge=1)
    daily_budget_share: float | None = Field(default=None, gt=0, le=1)


class CrmConfigs(_Strict):
    salesforce: SalesforceConfig | None = None
    hubspot: HubSpotConfig | None = None


class DaemonConfig(_Strict):
    push_interval_seconds: int = Field(default=60, ge=1)
    poll_interval_seconds: int = Field(default=300, ge=1)
    reconcile_cron: str = "0 3 * * *"
    batch_size: int = Field(default=200, ge=1, le=10000)
    # The longest a claim outlives a worker that cannot be judged dead: an op claimed under a lease is
    # due again after this, and the poller lease (the leader) passes on after this (README "Several replicas").
    lease_seconds: int = Field(default=300, ge=10)
    max_attempts: int = Field(default=8, ge=1)
    # Describes and stage lists are cached in the ledger and read again after this long (at once
    # when a call says the schema changed).
    schema_refresh_seconds: int = Field(default=3600, ge=0)
    # Crash recovery (state/workers.py): every process beats this often; a lease owner silent for
    # worker_timeout_seconds is dead and its ops are taken back (the lease stays the upper bound).
    heartbeat_seconds: float = Field(default=5, gt=0, le=300)
    worker_timeout_seconds: float = Field(default=30, gt=0, le=3600, validate_default=True)

    @field_validator("worker_timeout_seconds")
    @classmethod
    def _timeout_spans_beats(cls, value: float, info: ValidationInfo) -> float:
        beat = info.data.get("heartbeat_seconds")
        if beat is not None and value < 3 * beat:
            raise ValueError(
                f"{value:g} is less than 3 x heartbeat_seconds ({beat:g}): a live worker whose beat is a little "
                "late would lose its ops; raise worker_timeout_seconds or lower heartbeat_seconds")
        return value


class RetryConfig(_Strict):
    """How hard each CRM call is tried inside the cycle (adapters/retrying.CallPolicy)."""

    attempts: int = Field(default=6, ge=1, le=20)
    initial_wait_seconds: float = Field(default=0.5, ge=0, le=60)
    max_wait_seconds: float = Field(default=20.0, ge=0, le=600)
    max_retry_after_seconds: float = Field(default=30.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_wait_seconds < self.initial_wait_seconds:
            raise ValueError("max_wait_seconds must be at least initial_wait_seconds")
        return self

    def policy(self) -> CallPolicy:
        return CallPolicy(RetrySettings(self.attempts, self.initial_wait_seconds, self.max_wait_seconds,
                                        self.max_retry_after_seconds))


NOTIFY_DEFAULT = ("accepted", "contacted", "qualified", "opportunity", "proposal", "negotiation", "won", "lost",
                  "expired", "declined")


class NotificationsConfig(_Strict):
    """Partner webhooks: which status transitions notify, and how deliveries are tried."""

    enabled: bool = True
    statuses: list[str] = Field(default_factory=lambda: list(NOTIFY_DEFAULT))
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)  # one attempt as a whole, answer included
    max_attempts: int = Field(default=8, ge=1)
    allow_private_targets: bool = False  # http:// and loopback/private/link-local targets (internal receivers)
    include_prospect_email: bool = False  # put referral.prospect_email back into the payload

    @field_validator("statuses")
    @classmethod
    def _known_statuses(cls, value: list[str]) -> list[str]:
        from refsync.state.models import STATUSES

        unknown = [s for s in value if s not in STATUSES]
        if unknown:
            raise ValueError(f"unknown status {', '.join(unknown)}; use any of: {', '.join(STATUSES)}")
        return value


class AlertsConfig(_Strict):
    """Alert sinks (a log line always; a webhook optionally) and reconcile's thresholds."""

    webhook_url: str | None = None  # an https URL, or "env:NAME" / "file:PATH" when the URL holds a token
    webhook_secret: Secret  # optional: sign alert webhooks like partner notifications
    format: Literal["json", "slack"] = "json"
    storm_threshold: int = Field(default=50, ge=1)  # more new alerts than this at once: one summary
    stale_after_days: int = Field(default=30, ge=1, le=3650)
    won_lookback_days: int = Field(default=90, ge=1, le=3650)  # closed-won deals checked for attribution

    @field_validator("webhook_url")
    @classmethod
    def _url_or_reference(cls, value: str | None) -> str | None:
        if value is None or value.startswith(SECRET_SCHEMES):
            return value
        try:
            return _http_url(value)
        except ValueError as exc:
            raise ValueError(f"{exc}, or \"env:NAME\" / \"file:/path\" holding it") from None

    def resolved_url(self, base_dir: Path | None) -> str | None:
        url = self.webhook_url
        if url and url.startswith(SECRET_SCHEMES):
            return SecretRef(url).resolve("alerts.webhook_url", base_dir)
        return url


OUTGOING_WEBHOOKS = (("alerts", "webhook_url"),)  # config keys refsync POSTs to: the webhook target policy applies


class HttpConfig(_Strict):
    listen: str = "127.0.0.1:8787"
    intake_token: Secret
    # The address people reach the portal at, when it is not http://<listen> (behind a proxy, TLS):
    # invitation links start with it, and an https one makes the session cookie Secure.
    public_url: str | None = None
    session_hours: float = Field(default=12, gt=0, le=24 * 30)  # a web session lasts this long, then sign in again
    invite_days: float = Field(default=7, gt=0, le=90)  # a one-time link works this long

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be the portal's base URL, e.g. \"https://partners.example.com\" (no query)")
        return value.rstrip("/")


class RetentionConfig(_Strict):
    """How many days finished work is kept before the daemon (or `refsync prune`) deletes it; 0 keeps
    it forever. Audit events and status transitions are always kept."""

    done_ops_days: int = Field(default=30, ge=0, le=36500)
    job_runs_days: int = Field(default=90, ge=0, le=36500)
    delivered_notifications_days: int = Field(default=30, ge=0, le=36500)


class LoggingConfig(_Strict):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class CompensationConfig(_Strict):
    """Partner compensation: without this table it is off and nothing else changes."""

    terms: str = Field(min_length=1)  # the agreement terms file, relative to the config file

    def terms_path(self, base_dir: Path) -> Path:
        path = Path(self.terms).expanduser()
        return path if path.is_absolute() else base_dir / path


class SmtpConfig(_Strict):
    """An SMTP server through which `partners invite` and `users add` also email the one-time link."""

    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True  # upgrade the connection with STARTTLS before anything is sent (587)
    username: str | None = None
    password: Secret
    sender: str = Field(alias="from", min_length=3)  # the From address of the emails
    ca_bundle: str | None = None  # a CA file for a server with a private certificate
    timeout_seconds: float = Field(default=15, gt=0, le=300)

    @field_validator("sender")
    @classmethod
    def _address(cls, value: str) -> str:
        if not re.match(r"^[^@\s<>]+@[^@\s<>]+$", value.strip()):
            raise ValueError("must be an email address, e.g. \"partners@example.com\"")
        return value.strip()

    @model_validator(mode="after")
    def _login_pair(self) -> SmtpConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together: set both to sign in to the server, or neither")
        if self.password is not None and not self.starttls:
            raise ValueError("starttls = false would send the password unencrypted; keep starttls = true "
                             "(or leave out username and password for a server that needs no sign-in)")
        return self


class Config(_Strict):
    ledger: LedgerConfig = LedgerConfig()
    attribution: AttributionConfig = AttributionConfig()
    crm: CrmConfigs = CrmConfigs()
    daemon: DaemonConfig = DaemonConfig()
    retry: RetryConfig = RetryConfig()
    http: HttpConfig = HttpConfig(intake_token=None)
    logging: LoggingConfig = LoggingConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    alerts: AlertsConfig = AlertsConfig(webhook_secret=None)
    compensation: CompensationConfig | None = None
    smtp: SmtpConfig | None = None
    retention: RetentionConfig = RetentionConfig()

    # Set by load_config; not part of the file.
    source: Path | None = Field(default=None, exclude=True)

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def ledger_url(self) -> str:
        """The ledger URL with secret references resolved and relative SQLite paths made absolute
        against the config file's folder."""
        url = self.ledger.url
        if url.startswith(SECRET_SCHEMES):
            url = SecretRef(url).resolve("ledger.url", self.base_dir)
        match = re.match(r"^(sqlite(?:\+\w+)?:///)(.+)$", url)
        if match and match.group(2) != ":memory:" and not match.group(2).startswith("/"):
            url = match.group(1) + str((self.base_dir / match.group(2)).resolve())
        return url

    def path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def mapping_path(self, value: str, key_path: str) -> Path:
        """Where a mapping file is: beside the config, else in the working directory, else the
        shipped default of the same name; a ConfigError lists every place looked at."""
        path = Path(value).expanduser()
        shipped = [shipped_path("mappings", path.name)]
        candidates = [path] if path.is_absolute() else [self.base_dir / path, Path.cwd() / path, *shipped]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = ", ".join(str(c) for c in candidates)
        raise ConfigError(f"{key_path}: mapping file {value} not found (looked at: {looked}); fix the path or copy "
                          "a shipped file (`refsync init --example` shows where they are)")

    def secrets(self) -> list[str]:
        """Every secret value this config references and can resolve: fed to the log redactor."""
        found: list[str] = []
        for crm in (self.crm.salesforce, self.crm.hubspot, self.http, self.alerts, self.smtp):
            if crm is None:
                continue
            for name in type(crm).model_fields:
                value = getattr(crm, name)
                if isinstance(value, SecretRef):
                    try:
                        found.append(value.resolve(name, self.base_dir))
                    except ConfigError:
                        continue  # reported when a command actually needs it
        if self.alerts.webhook_url and self.alerts.webhook_url.startswith(SECRET_SCHEMES):
            try:
                found.append(self.alerts.resolved_url(self.base_dir) or "")
            except ConfigError:
                pass  # reported when an alert webhook is delivered
        return [f for f in found if f]


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        loc = tuple(error["loc"])
        hint = did_you_mean(str(loc[-1]), keys_at(Config, loc[:-1])) if loc else ""
        return f"unknown key{hint}; remove it or check its spelling against config.example.toml"
    if kind == "missing":
        return "required key is missing; add it (see config.example.toml)"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _known_crms_problem(raw: dict[str, Any], file: str, text: str) -> list[str]:
    crm = raw.get("crm", {})
    if not isinstance(crm, dict):
        return []
    known = set(CrmConfigs.model_fields)
    return [
        f"{file}:{line_of(text, ('crm', name)) or '?'}: crm.{name}: unknown CRM{did_you_mean(name, known)}; "
        f"refsync supports {', '.join(sorted(known))}"
        for name in crm
        if name not in known
    ]


def _webhook_target_problems(raw: dict[str, Any], file: str, text: str) -> list[str]:
    """Outgoing webhook URLs written in the file must pass the policy partner webhooks pass
    (``connector.webhook_target``): refused now, at load, not at the first alert. A reference
    (``env:``/``file:``) is checked when it is resolved, before each delivery."""
    from refsync.connector.webhook_target import url_problem

    notifications = raw.get("notifications")
    allow = isinstance(notifications, dict) and notifications.get("allow_private_targets") is True
    problems = []
    for loc in OUTGOING_WEBHOOKS:
        section = raw.get(loc[0])
        url = section.get(loc[1]) if isinstance(section, dict) else None
        if not isinstance(url, str) or url.startswith(SECRET_SCHEMES) or not re.match(r"^https?://", url):
            continue  # absent, a reference, or not a URL at all (the model says so)
        problem = url_problem(url, allow)
        if problem:
            problems.append(f"{file}:{line_of(text, loc) or '?'}: {'.'.join(loc)}: {problem}")
    return problems


def parse_config(text: str, source: Path | None = None) -> Config:
    """Validate a config text; raises ConfigError listing every problem."""
    file = str(source) if source else "<config>"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}; fix the syntax at that line") from exc
    unknown_crms = _known_crms_problem(raw, file, text)
    problems = unknown_crms + _missing_files(raw, source, file, text)
    if unknown_crms:
        raw["crm"] = {k: v for k, v in raw["crm"].items() if k in CrmConfigs.model_fields}
    problems += _webhook_target_problems(raw, file, text)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            path = ".".join(str(p) for p in loc if not isinstance(p, int))
            line = line_of(text, loc)
            problems.append(f"{file}:{line or '?'}: {path}: {_describe(error)}")
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config.model_copy(update={"source": source})


def _missing_files(raw: dict[str, Any], source: Path | None, file: str, text: str) -> list[str]:
    """Files the config names that must exist before anything starts (a private CA bundle: a
    missing one would only show as TLS failures at the first call)."""
    crm = raw.get("crm")
    sf = crm.get("salesforce") if isinstance(crm, dict) else None
    bundle = sf.get("ca_bundle") if isinstance(sf, dict) else None
    if not isinstance(bundle, str) or not bundle:
        return []
    path = Path(bundle).expanduser()
    if not path.is_absolute():
        path = (source.parent if source else Path.cwd()) / path
    if path.is_file():
        return []
    where = line_of(text, ("crm", "salesforce", "ca_bundle")) or "?"
    return [f"{file}:{where}: crm.salesforce.ca_bundle: no file at {path}; point it at the PEM file of the "
            "CA that signed the org's certificate (relative paths are relative to the config file), or remove "
            "the key to use the system's CAs"]


def load_config(path: str | Path | None) -> Config:
    """Read the config from ``path``, else $REFSYNC_CONFIG, else ./refsync.toml."""
    candidates = [path] if path else [os.environ.get(CONFIG_ENV), "refsync.toml"]
    chosen = next((Path(p) for p in candidates if p), None)
    if chosen is None or not chosen.exists():
        looked = ", ".join(
            [f"--config {path}"] if path else [f"${CONFIG_ENV} (unset)" if not os.environ.get(CONFIG_ENV)
                                               else f"${CONFIG_ENV}={os.environ[CONFIG_ENV]}",
                                               "./refsync.toml"]
        )
        raise ConfigError(
            f"no config file found (looked at: {looked}); copy config.example.toml and pass "
            "--config PATH or set REFSYNC_CONFIG"
        )
    try:
        text = chosen.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{chosen}: cannot read config file: {exc}") from exc
    return parse_config(text, chosen.resolve())
