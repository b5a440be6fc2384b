"""Reading referral files (CSV or JSONL) and validating each row on its own.

Pure: turns bytes into :class:`NewReferral` values or :class:`RowProblem` reports, each with the
line number in the file (the CSV header is line 1), the column and the fix. Nothing here touches
the ledger.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from email_validator import EmailNotValidError, validate_email

from connector.attribution import company_key, email_domain
from connector.errors import InputError

COLUMNS = (
    "partner",
    "prospect_email",
    "prospect_company",
    "prospect_name",
    "source",
    "medium",
    "campaign",
    "submitted_at",
    "link",
    "external_id",
)
MAX_LENGTH = {
    "partner": 64,
    "prospect_email": 320,
    "prospect_company": 255,
    "prospect_name": 255,
    "source": 255,
    "medium": 255,
    "campaign": 255,
    "external_id": 255,
    "link": 2048,
    "submitted_at": 64,
}
PARTNER_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NOT_UTF8 = re.compile(r"[\udc80-\udcff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


EARLIEST_YEAR = 1900  # submitted_at before this is refused: a typo or placeholder, not a referral


@dataclass(frozen=True)
class RowProblem:
    line: int
    column: str | None
    reason: str
    severity: str = "error"  # error: the row was rejected; note: accepted, but read this

    def describe(self, file: str) -> str:
        where = f"{file}:{self.line}" + (f": {self.column}" if self.column else "")
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class NewReferral:
    """A validated referral, ready for the ledger."""

    line: int
    partner: str
    prospect_email: str | None
    prospect_company: str | None
    prospect_name: str | None
    source: str | None
    medium: str | None
    campaign: str | None
    submitted_at: datetime
    link: str | None
    external_id: str | None
    referral_code: str | None
    prospect_domain: str | None
    company_key: str | None
    fingerprint: str
    notes: tuple[RowProblem, ...] = field(default=())


@dataclass
class ParsedFile:
    """Rows are produced lazily; ``problems`` is complete once ``rows`` has been consumed."""

    rows: Iterator[tuple[int, dict[str, Any]]]
    problems: list[RowProblem]


def detect_format(path: Path, head: bytes) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "jsonl"
    if b"," in head.split(b"\n", 1)[0]:
        return "csv"
    raise InputError(
        f"{path}: cannot tell whether this is CSV or JSONL; name it .csv or .jsonl "
        "(CSV needs a header row with the columns: " + ", ".join(COLUMNS) + ")"
    )


def _decode(data: bytes) -> str:
    # surrogateescape keeps every byte: rows with non-UTF-8 bytes are rejected one by one, not the file.
    return data.decode("utf-8-sig", errors="surrogateescape")


def read_csv(text: str) -> ParsedFile:
    """Rows of a CSV text keyed by the known columns, with the line each starts on."""
    problems: list[RowProblem] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return ParsedFile(iter(()), [RowProblem(1, None, "the file is empty; add a header row and rows")])
    names = [h.strip().lower() for h in header]
    unknown = [h for h in names if h and h not in COLUMNS]
    for name in unknown:
        problems.append(
            RowProblem(1, name, "unknown column, ignored; the columns are " + ", ".join(COLUMNS), "note")
        )
    seen = set(names)
    if "partner" not in seen and "link" not in seen:
        problems.append(RowProblem(1, None, "the header has no 'partner' (or 'link') column; add it"))
    if "prospect_email" not in seen and "prospect_company" not in seen:
        problems.append(
            RowProblem(1, None, "the header has neither 'prospect_email' nor 'prospect_company'; add one")
        )
    if any(p.severity == "error" for p in problems):
        return ParsedFile(iter(()), problems)
    return ParsedFile(_csv_rows(reader, names, problems), problems)


def _csv_rows(
    reader: Any, names: list[str], problems: list[RowProblem]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows one at a time (a large file is never held as rows in memory); problems appended as met."""
    start = reader.line_num + 1
    try:
        for record in reader:
            line = start
            start = reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if len(record) > len(names):
                problems.append(
                    RowProblem(line, None, f"{len(record)} values but the header has {len(names)} columns; "
                               "quote values that contain commas")
                )
                continue
            yield line, {n: v for n, v in zip(names, record, strict=False) if n in COLUMNS}
    except csv.Error as exc:
        problems.append(RowProblem(start, None, f"unreadable CSV ({exc}); the rest of the file was not read"))


def read_jsonl(text: str) -> ParsedFile:
    problems: list[RowProblem] = []
    return ParsedFile(_jsonl_rows(text, problems), problems)


def _jsonl_rows(text: str, problems: list[RowProblem]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(RowProblem(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(value, dict):
            problems.append(RowProblem(number, None, "each line must be a JSON object with the import keys"))
            continue
        for key in value:
            if key not in COLUMNS:
                problems.append(RowProblem(number, str(key), "unknown key, ignored", "note"))
        yield number, {k: v for k, v in value.items() if k in COLUMNS}


def read_file(path: Path) -> ParsedFile:
    """Parse a referral file; InputError when the file itself cannot be used."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror})") from exc
    text = _decode(data)
    return read_csv(text) if detect_format(path, data[:4096]) == "csv" else read_jsonl(text)


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    value = value.strip()
    return value or None


def _parse_time(value: str, now: datetime) -> tuple[datetime, bool]:
    text = value.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        text += "T00:00:00"
    parsed = datetime.fromisoformat(text.replace("z", "Z"))
    naive = parsed.tzinfo is None
    return (parsed.replace(tzinfo=UTC) if naive else parsed.astimezone(UTC)), naive


def _link_params(link: str) -> dict[str, str]:
    parts = urlsplit(link)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("not an http(s) URL; give the full tracking link, e.g. https://example.com/?ref=CODE")
    query = parse_qs(parts.query)
    return {key: values[0] for key, values in query.items() if values and values[0].strip()}


def fingerprint(values: dict[str, str | None]) -> str:
    """Identity of a row for idempotent re-import: its external id, else its content."""
    if values.get("external_id"):
        basis = "ext\x1f" + str(values["external_id"])
    else:
        basis = "row\x1f" + "\x1f".join(str(values.get(c) or "") for c in COLUMNS if c != "external_id")
    return hashlib.sha256(basis.encode("utf-8", errors="surrogatepass")).hexdigest()


def _too_early(line: int, text: str) -> RowProblem:
    # A typo (0226 for 2026) or a placeholder (0001-01-01): no referral is that old, and a CRM may
    # refuse the value for the whole request (crm-api/salesforce/README.md, JSON_PARSER_ERROR).
    return RowProblem(line, "submitted_at", f"{text} is before {EARLIEST_YEAR}; check the year (write it like "
                      "2026-03-01T09:30:00Z)")


def validate_row(line: int, raw: dict[str, Any], now: datetime) -> NewReferral | list[RowProblem]:
    """Check one row; a NewReferral or every problem of the row."""
    problems: list[RowProblem] = []
    notes: list[RowProblem] = []
    values = {c: _clean(raw.get(c)) for c in COLUMNS}
    for column, value in values.items():
        if value is None:
            continue
        if _NOT_UTF8.search(value):
            problems.append(RowProblem(line, column, "contains bytes that are not UTF-8; save the file as UTF-8"))
            values[column] = None
        elif _CONTROL.search(value):
            problems.append(RowProblem(line, column, "contains control characters; remove them"))
            values[column] = None
        elif len(value) > MAX_LENGTH[column]:
            problems.append(
                RowProblem(line, column, f"{len(value)} characters, longer than the {MAX_LENGTH[column]} allowed; "
                           "shorten it")
            )
            values[column] = None
    if problems:
        return problems

    raw_values = dict(values)
    ref_code = None
    if values["link"]:
        try:
            params = _link_params(values["link"])
        except ValueError as exc:
            return [RowProblem(line, "link", str(exc))]
        ref_code = params.get("ref")
        for column, param in (("partner", "ref"), ("source", "utm_source"), ("medium", "utm_medium"),
                              ("campaign", "utm_campaign")):
            if not values[column] and params.get(param):
                values[column] = params[param][: MAX_LENGTH[column]]

    partner = values["partner"]
    if not partner:
        problems.append(RowProblem(line, "partner", "missing; give the partner code (or a link with ?ref=CODE)"))
    elif len(partner) > MAX_LENGTH["partner"] or not PARTNER_CODE.match(partner):
        problems.append(
            RowProblem(line, "partner", f"'{partner}' is not a partner code: use letters, digits, '.', '_' "
                       "or '-' (at most 64, starting with a letter or digit)")
        )

    email = values["prospect_email"]
    if email:
        try:
            email = validate_email(email, check_deliverability=False).normalized.lower()
        except EmailNotValidError as exc:
            problems.append(RowProblem(line, "prospect_email", f"'{email}' is not an email address ({exc})"))
            email = None
    if not values["prospect_email"] and not values["prospect_company"]:
        problems.append(RowProblem(line, None, "needs prospect_email or prospect_company; fill one"))

    submitted_at = now
    if values["submitted_at"]:
        try:
            submitted_at, naive = _parse_time(values["submitted_at"], now)
        except ValueError:
            problems.append(RowProblem(line, "submitted_at", f"'{values['submitted_at']}' is not an ISO 8601 "
                                       "time; write it like 2026-03-01T09:30:00Z"))
        except OverflowError:  # 0001-01-01T00:00+05:00: before the first moment Python can hold in UTC
            problems.append(_too_early(line, values["submitted_at"]))
        else:
            if submitted_at.year < EARLIEST_YEAR:
                problems.append(_too_early(line, values["submitted_at"]))
            if naive:
                notes.append(RowProblem(line, "submitted_at", "has no timezone; read as UTC", "note"))
            if submitted_at > now + timedelta(minutes=5):
                problems.append(RowProblem(line, "submitted_at", f"{values['submitted_at']} is in the future; "
                                           "a referral cannot be submitted later than now"))
    else:
        notes.append(RowProblem(line, "submitted_at", "empty; the import time was used", "note"))
    if problems:
        return problems

    domain = email_domain(email)
    assert partner is not None  # checked above
    return NewReferral(
        line=line,
        partner=partner,
        prospect_email=email,
        prospect_company=values["prospect_company"],
        prospect_name=values["prospect_name"],
        source=values["source"],
        medium=values["medium"],
        campaign=values["campaign"],
        submitted_at=submitted_at,
        link=values["link"],
        external_id=values["external_id"],
        referral_code=ref_code,
        prospect_domain=domain or company_key(values["prospect_company"], None),
        company_key=company_key(values["prospect_company"], domain),
        fingerprint=fingerprint(raw_values),
        notes=tuple(notes),
    )


def validated(parsed: ParsedFile, now: datetime) -> Iterator[NewReferral | list[RowProblem]]:
    for line, raw in parsed.rows:
        yield validate_row(line, raw, now)
