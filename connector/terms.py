"""The agreement terms file (``[compensation] terms``): load it, validate all of it, name every problem.

The file holds a ``[program]`` table (terms for every partner without its own) and ``[partner."CODE"]``
tables; either may be written ``[[...]]`` several times, each a version with its own ``effective_from``.
Every problem comes back at once as ``FILE:LINE: key.path: what is wrong and how to fix it``.
The computation itself lives in :mod:`connector.commission`; this module only turns text into
:class:`~refsync.connector.commission.TermsBook`.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from refsync.connector.commission import (
    HoldRules,
    Terms,
    TermsBook,
    Tier,
    minor_digits,
    to_minor,
)
from refsync.connector.tomlfile import line_in_table, line_of
from refsync.errors import ConfigError

PRICING_KEYS = ("percent", "flat", "tiers", "min_deal", "cap_per_deal", "cap_per_period", "hold_days", "currency",
                "tier_basis", "period", "effective_from", "version")


def _decimal(value: Any) -> Any:
    """TOML numbers as Decimal; a float goes through its shortest text so 0.1 stays 0.1."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    if isinstance(value, int | float):
        return Decimal(str(value))
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            raise ValueError(f"'{value}' is not a number; write it like 12.5") from None
    return value


Money = Annotated[Decimal, BeforeValidator(_decimal), Field(ge=0)]
Percent = Annotated[Decimal, BeforeValidator(_decimal), Field(ge=0, le=100)]


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TierTable(_Strict):
    from_: Money = Field(alias="from")
    percent: Percent


class TermsTable(_Strict):
    effective_from: date = date.min
    version: str | None = Field(default=None, min_length=1, max_length=48)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    percent: Percent | None = None
    flat: Money | None = None
    tiers: list[TierTable] | None = None
    tier_basis: Literal["deal", "volume"] = "deal"
    period: Literal["month", "quarter", "year"] = "quarter"
    min_deal: Money | None = None
    cap_per_deal: Money | None = None
    cap_per_period: Money | None = None
    hold_days: int | None = Field(default=None, ge=0, le=3650)
    domains: list[Annotated[str, Field(min_length=3, pattern=r"^[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")]] = []

    @property
    def prices(self) -> bool:
        """Whether this table sets terms (a version), rather than only the partner's own domains."""
        return bool(self.model_fields_set & set(PRICING_KEYS))

    @model_validator(mode="after")
    def _complete(self) -> TermsTable:
        if not self.prices:
            return self
        problems = []
        if self.currency is None:
            problems.append('currency is missing; add currency = "USD" (the ISO 4217 code commissions are '
                            "paid in)")
        if self.hold_days is None:
            problems.append("hold_days is missing; add hold_days = 30 (days before a commission is payable; "
                            "0 for none)")
        if self.percent is None and self.flat is None and self.tiers is None:
            problems.append("no pricing; set percent (of the won amount), flat (per won deal), or tiers")
        if self.percent is not None and self.tiers is not None:
            problems.append("percent and tiers both set; keep one (tiers give the percent by amount)")
        if self.tiers is not None:
            starts = [t.from_ for t in self.tiers]
            if not starts or starts[0] != 0:
                problems.append("tiers must start with { from = 0, percent = ... } so every amount has a rate")
            elif any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
                problems.append("tiers must be in ascending order of from, each from larger than the one before")
        if self.currency is not None:
            digits = minor_digits(self.currency)
            for name in ("flat", "min_deal", "cap_per_deal", "cap_per_period"):
                value = getattr(self, name)
                if value is not None and value != round(value, digits):
                    problems.append(f"{name} = {value} has more decimals than {self.currency} has ({digits}); "
                                    f"round it to {round(value, digits)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class HoldTable(_Strict):
    burst_window_hours: int = Field(default=24, ge=1, le=24 * 90)
    burst_factor: Annotated[Decimal, BeforeValidator(_decimal), Field(gt=1)] = Decimal(5)
    burst_min_referrals: int = Field(default=10, ge=1)
    baseline_days: int = Field(default=90, ge=1, le=3650)
    duplicate_window_days: int = Field(default=30, ge=0, le=3650)
    min_hours_to_close: Annotated[Decimal, BeforeValidator(_decimal), Field(ge=0)] = Decimal(24)


class TermsFile(_Strict):
    applies_to: Literal["submitted", "won"] = "submitted"
    holds: HoldTable = HoldTable()
    program: Annotated[list[TermsTable], BeforeValidator(_listed)] = []
    partner: dict[str, Annotated[list[TermsTable], BeforeValidator(_listed)]] = {}


def _version_id(scope: str, table: TermsTable) -> str:
    if table.version:
        return table.version
    content = table.model_dump(mode="json", exclude={"domains", "version"}, by_alias=True)
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
    start = "always" if table.effective_from == date.min else table.effective_from.isoformat()
    return f"{scope}@{start}#{digest}"


def _terms(scope: str, table: TermsTable) -> Terms:
    currency = table.currency or ""

    def minor(value: Decimal | None) -> int | None:
        return None if value is None else to_minor(value, currency)

    return Terms(
        version=_version_id(scope, table), scope=scope, effective_from=table.effective_from, currency=currency,
        percent=table.percent, flat_minor=minor(table.flat) or 0,
        tiers=tuple(Tier(to_minor(t.from_, currency), t.percent) for t in table.tiers or ()),
        tier_basis=table.tier_basis, period=table.period, min_deal_minor=minor(table.min_deal),
        cap_per_deal_minor=minor(table.cap_per_deal), cap_per_period_minor=minor(table.cap_per_period),
        hold_days=table.hold_days or 0)


def _line(text: str, loc: tuple[Any, ...]) -> int | None:
    if loc and loc[0] in ("program", "partner", "holds"):
        table = tuple(str(p) for p in loc[:2]) if loc[0] == "partner" else (str(loc[0]),)
        rest = loc[len(table):]
        occurrence = rest[0] if rest and isinstance(rest[0], int) else 0
        keys = [p for p in rest if not isinstance(p, int)]
        return line_in_table(text, table, occurrence, str(keys[0]) if keys else None)
    return line_of(text, loc)


PATTERN_FIXES = {"currency": 'must be an ISO 4217 code in capitals, like "USD"',
                 "domains": 'each must be a domain name like "partner.example" (no scheme, no @)'}


def _describe(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key; remove it or check its spelling against the README's terms file example"
    if error["type"] == "missing":
        return "required key is missing; add it (see the README's terms file example)"
    if error["type"] == "string_pattern_mismatch":
        key = next((str(p) for p in reversed(error["loc"]) if not isinstance(p, int)), "")
        return f"{error['input']!r} {PATTERN_FIXES.get(key, 'has the wrong form')}"
    return str(error["msg"]).removeprefix("Value error, ")


def _book(parsed: TermsFile, text: str, file: str) -> TermsBook:
    problems: list[str] = []
    scopes: dict[str, list[TermsTable]] = {"program": parsed.program}
    scopes.update({f"partner:{code}": tables for code, tables in parsed.partner.items()})
    versions: dict[str, list[Terms]] = {}
    labels: dict[str, str] = {}
    for scope, tables in scopes.items():
        table_path = ("program",) if scope == "program" else ("partner", scope.split(":", 1)[1])
        starts: dict[date, int] = {}
        for index, table in enumerate(tables):
            if not table.prices:
                if scope == "program":
                    problems.append(f"{file}:{line_in_table(text, table_path, index) or '?'}: program: sets no "
                                    "terms; add currency, hold_days and percent, flat or tiers")
                continue
            where = f"{file}:{line_in_table(text, table_path, index, 'effective_from') or '?'}: {'.'.join(table_path)}"
            if table.effective_from in starts:
                problems.append(f"{where}: effective_from {table.effective_from} is also the start of the table "
                                f"before; give each version of the same terms its own date")
            starts[table.effective_from] = index
            terms = _terms(scope, table)
            if terms.version in labels:
                problems.append(f"{where}: version \"{terms.version}\" is already used by {labels[terms.version]}; "
                                "give each version its own label")
            labels[terms.version] = ".".join(table_path)
            versions.setdefault(scope, []).append(terms)
    if problems:
        raise ConfigError(problems)
    program = tuple(sorted(versions.pop("program", []), key=lambda t: t.effective_from))
    partners = {scope.split(":", 1)[1]: tuple(sorted(v, key=lambda t: t.effective_from))
                for scope, v in versions.items()}
    domains = {code: tuple(sorted({d.lower() for t in tables for d in t.domains}))
               for code, tables in parsed.partner.items()}
    holds = parsed.holds
    return TermsBook(parsed.applies_to, program, partners, {k: v for k, v in domains.items() if v},
                     HoldRules(holds.burst_window_hours, holds.burst_factor, holds.burst_min_referrals,
                               holds.baseline_days, holds.duplicate_window_days, holds.min_hours_to_close))


def parse_terms(text: str, source: Path | None = None) -> TermsBook:
    """Validate a terms text; raises ConfigError listing every problem with its line."""
    file = str(source) if source else "<terms>"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The contract lets an admin write a later [partner."CODE"] (or [program]) table as a new
        # version; TOML itself refuses a table declared twice, so read every such table as an entry
        # of [[...]] (same lines, so every error still names the right one).
        versions = as_version_arrays(text)
        try:
            raw = tomllib.loads(versions)
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"{file}: not valid TOML: {exc}; fix the syntax at that line") from exc
        text = versions
    try:
        parsed = TermsFile.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            path = ".".join(str(p) for p in loc if not isinstance(p, int) and p not in ("list[TermsTable]",))
            problems.append(f"{file}:{_line(text, loc) or '?'}: {path}: {_describe(error)}")
        raise ConfigError(problems) from None
    return _book(parsed, text, file)


_VERSION_TABLE = re.compile(r"""^(\s*)\[\s*(program|partner\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+))\s*\]"""
                            r"(\s*(?:#.*)?)$")


def as_version_arrays(text: str) -> str:
    """``text`` with every ``[program]`` and ``[partner."CODE"]`` header written ``[[...]]``, line for
    line: each table is then one version, however many times a partner's table appears."""
    return "\n".join(_VERSION_TABLE.sub(r"\1[[\2]]\3", line) for line in text.split("\n"))


def load_terms(path: Path) -> TermsBook:
    """Read and validate the terms file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"compensation.terms: cannot read terms file {path} ({exc}); fix the path "
                          "(relative to the config file) or create the file (see the README)") from exc
    return parse_terms(text, path)
