"""Reading referral files (CSV or JSONL) and validating each row on its own.

Pure: turns bytes into :class:`NewReferral` values or :class:`RowProblem` reports, each with the
line number in the file (the CSV header is line 1), the column and the fix. Nothing here touches
the ledger.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from email_validator import EmailNotValidError, ValidatedEmail, validate_email

from refsync.connector.attribution import company_key, email_domain
from refsync.connector.logs import get_logger
from refsync.errors import InputError

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
_NOT_UTF8 = re.compile(r"[\udc80-\udcff]")  # bytes that were not UTF-8, kept by surrogateescape
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # a lone surrogate (JSON "\ud800"): no UTF-8 encoding exists
# Control characters, line breaks included (C0, DEL, C1, U+2028/2029): a name with a line break or
# a tab breaks reports, CSV exports and CRM layouts, and is never what the partner meant.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Bidirectional embeddings, overrides and isolates (Unicode TR9; the "Trojan Source" set,
# CVE-2021-42574): they make a name display as something other than what it is.
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
MAX_UNKNOWN_NOTES = 10  # unknown keys of one JSONL line named one by one; the rest are counted
MAX_COLUMNS = 64  # header columns refsync reads: ten are known; more is not a referral file
log = get_logger("refsync.intake")


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


def read_csv(text: str, partner_given: bool = False) -> ParsedFile:
    """Rows of a CSV text keyed by the known columns, with the line each starts on.
    ``partner_given``: the caller fills the partner (the portal), so the column may be absent."""
    problems: list[RowProblem] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return ParsedFile(iter(()), [RowProblem(1, None, "the file is empty; add a header row and rows")])
    if len(header) > MAX_COLUMNS:
        # One error, not a note per column: a million columns must not print a million lines.
        raise InputError(f"line 1: the header has {len(header)} columns, more than the {MAX_COLUMNS} refsync "
                         "reads; is this a referral file? The columns are: " + ", ".join(COLUMNS))
    names = [h.strip().lower() for h in header]
    twice = sorted({h for h in names if h and names.count(h) > 1})
    if twice:
        # Which of two values would count is a guess either way: refuse rather than keep the last.
        raise InputError("line 1: the header names " + ", ".join(f"'{h}'" for h in twice)
                         + " more than once; keep one column of each name")
    unknown = [h for h in names if h and h not in COLUMNS]
    for name in unknown:
        problems.append(
            RowProblem(1, name, "unknown column, ignored; the columns are " + ", ".join(COLUMNS), "note")
        )
    seen = set(names)
    if "partner" not in seen and "link" not in seen and not partner_given:
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
    """Rows one at a time (a large file is never held as rows in memory); problems appended as met.

    A record the reader cannot read (a field over the csv module's limit) is reported and reading
    goes on with the next line; a quoted value running over several lines (an unbalanced quote
    swallows the rows after it) is reported with the lines it spans, and the rows after it are read.
    """
    start = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(RowProblem(start, None, f"unreadable CSV on {_lines(start, reader.line_num)} ({exc}); "
                                       "these lines were not imported, the rows after them were read"))
            start = reader.line_num + 1
            continue
        line, end = start, reader.line_num
        start = end + 1
        if not any(cell.strip() for cell in record):
            continue
        if end > line and any("\n" in cell or "\r" in cell for cell in record):
            problems.append(RowProblem(line, None, f"a quoted value runs over {_lines(line, end)}: an unbalanced "
                                       "quote (\") joins the rows after it into one value; close the quote or "
                                       "remove the line break; these lines were not imported"))
            continue
        if len(record) > len(names):
            problems.append(
                RowProblem(line, None, f"{len(record)} values but the header has {len(names)} columns; "
                           "quote values that contain commas")
            )
            continue
        yield line, {n: v for n, v in zip(names, record, strict=False) if n in COLUMNS}


def _lines(first: int, last: int) -> str:
    return f"line {first}" if last <= first else f"lines {first}-{last}"


class JsonObject(dict[str, Any]):
    """A JSON object as parsed by :func:`parse_json`, remembering the keys it held more than once."""

    repeated: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, Any]]) -> JsonObject:
    found = JsonObject(pairs)
    if len(found) != len(pairs):
        found.repeated = tuple(key for key, count in Counter(k for k, _ in pairs).items() if count > 1)
    return found


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` that keeps track of repeated keys (:class:`JsonObject`): ``{"partner": "a",
    "partner": "b"}`` is ambiguous, and json's "the last one wins" would pick for the sender."""
    return json.loads(text, object_pairs_hook=_json_object)


def repeated_key_problems(line: int, value: Any) -> list[RowProblem]:
    """One problem for each key a parsed object (not its nested values) holds more than once."""
    return [RowProblem(line, key, "the key appears more than once in this object; send it once (which "
                                  "value was meant cannot be told)") for key in getattr(value, "repeated", ())]


def read_jsonl(text: str) -> ParsedFile:
    problems: list[RowProblem] = []
    return ParsedFile(_jsonl_rows(text, problems), problems)


def _jsonl_rows(text: str, problems: list[RowProblem]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            value = parse_json(line)
        except json.JSONDecodeError as exc:
            problems.append(RowProblem(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        except RecursionError:  # [[[[...]]]] 100,000 deep: this line's problem, not the file's
            problems.append(RowProblem(number, None, "nested too deeply to read; each line must be one flat "
                                       "JSON object with the import keys"))
            continue
        except ValueError as exc:  # e.g. an integer of more than 4,300 digits
            problems.append(RowProblem(number, None, f"not valid JSON ({exc})"))
            continue
        if not isinstance(value, dict):
            problems.append(RowProblem(number, None, "each line must be a JSON object with the import keys"))
            continue
        repeated = repeated_key_problems(number, value)
        if repeated:
            problems.extend(repeated)
            continue
        unknown = [str(key) for key in value if key not in COLUMNS]
        for key in unknown[:MAX_UNKNOWN_NOTES]:
            problems.append(RowProblem(number, key, "unknown key, ignored", "note"))
        if len(unknown) > MAX_UNKNOWN_NOTES:  # a line with 100,000 keys is one more note, not 100,000
            more = len(unknown) - MAX_UNKNOWN_NOTES - 1
            problems.append(RowProblem(number, unknown[MAX_UNKNOWN_NOTES], f"and {more} more unknown keys, ignored",
                                       "note"))
        yield number, {k: v for k, v in value.items() if k in COLUMNS}


def read_file(path: Path) -> ParsedFile:
    """Parse a referral file; InputError when the file itself cannot be used."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror})") from exc
    text = _decode(data)
    return read_csv(text) if detect_format(path, data[:4096]) == "csv" else read_jsonl(text)


def _text(value: Any) -> str | None:
    """A value as the text the CRMs will hold; ValueError (the reason) when it is not text.

    Numbers stand for their digits (a JSON ``"external_id": 1001``); NaN, infinities, true/false,
    objects and arrays are refused: ``str()`` would turn them into ``"nan"`` or ``"{'a': 1}"``."""
    if value.__class__ is str:  # every CSV value
        return value.strip() or None
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{json.dumps(value)} is not text; give a string")
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number; give a string")
        value = repr(value)
    elif not isinstance(value, str):
        kind = "an object" if isinstance(value, dict) else "an array" if isinstance(value, list) else "not text"
        raise ValueError(f"is {kind}; give a string")
    value = value.strip()
    return value or None


def _text_problem(value: str) -> str | None:
    """Why a text value cannot be stored as it is, or None."""
    if value.isascii() and value.isprintable():
        return None  # every character below matches is either outside ASCII or not printable
    if _NOT_UTF8.search(value):
        return "contains bytes that are not UTF-8; save the file as UTF-8"
    if _SURROGATE.search(value):
        return "contains a lone surrogate (like \\ud800), which cannot be written as UTF-8; send the character itself"
    if _CONTROL.search(value):
        return "contains control characters (a line break, tab or similar); remove them"
    if _BIDI.search(value):
        return "contains bidirectional override characters (U+202A-U+202E, U+2066-U+2069); remove them"
    return None


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
    """Check one row; a NewReferral or every problem of the row.

    Never raises for what the row holds: an exception the checks did not foresee still becomes
    this row's problem (with its type in the reason), so one row can never fail its file or request."""
    try:
        return _validate_row(line, raw, now)
    except Exception as exc:  # noqa: BLE001 - any value of one row is that row's problem, never the file's
        log.warning("row could not be validated", line=line, error=type(exc).__name__)
        return [RowProblem(line, None, f"could not be read ({type(exc).__name__}); check the row's values")]


# The plain ASCII address most rows hold: dot-atom local part (RFC 5322 3.2.3, email_validator's
# own DOT_ATOM_TEXT) and a domain of letters, digits, dots and hyphens.
_ATEXT = r"a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~"
_PLAIN_LOCAL = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*\\Z")
_PLAIN_DOMAIN = re.compile(r"[A-Za-z0-9.-]+\Z")
_EMAIL_MAX = 254  # RFC 5321 4.5.3.1.3, as email_validator checks it


@functools.lru_cache(maxsize=4096)
def _domain(domain: str) -> ValidatedEmail | EmailNotValidError:
    """email_validator's verdict on a domain (an address ``a@domain``), once per domain: most of
    validating an address is its domain (a per-character IDNA check), and an import repeats domains."""
    try:
        return validate_email("a@" + domain, check_deliverability=False)
    except EmailNotValidError as exc:
        return exc


def normal_email(text: str) -> str:
    """``text`` as email_validator normalizes it (without DNS checks), lower-cased; raises its
    ``EmailNotValidError``. A plain ASCII address is split here and its domain's verdict taken from
    :func:`_domain`: the local part is valid exactly when it is a dot-atom (what email_validator
    checks first and returns unchanged), and the address as long as the library allows. Anything
    else (quotes, display names, non-ASCII, an over-long address) goes to email_validator whole,
    so its message is the library's own."""
    local, at, domain = text.partition("@")
    if at and len(text) <= _EMAIL_MAX and _PLAIN_LOCAL.match(local) and _PLAIN_DOMAIN.match(domain):
        verdict = _domain(domain)
        if isinstance(verdict, EmailNotValidError):
            raise type(verdict)(*verdict.args)  # a new one: a cached exception would grow a traceback per raise
        normalized = f"{local}@{verdict.domain}"  # lengths as the library counts them: UTF-8 bytes
        if len(normalized.encode()) <= _EMAIL_MAX and len(local) + 1 + len(verdict.ascii_domain or "") <= _EMAIL_MAX:
            return normalized.lower()
    return validate_email(text, check_deliverability=False).normalized.lower()


def _validate_row(line: int, raw: dict[str, Any], now: datetime) -> NewReferral | list[RowProblem]:
    problems: list[RowProblem] = []
    notes: list[RowProblem] = []
    values: dict[str, str | None] = {}
    for column in COLUMNS:
        try:
            values[column] = _text(raw.get(column))
        except ValueError as exc:
            problems.append(RowProblem(line, column, str(exc)))
            values[column] = None
    for column, value in values.items():
        if value is None:
            continue
        reason = _text_problem(value)
        if reason is not None:
            problems.append(RowProblem(line, column, reason))
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
            email = normal_email(email)
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
        except OverflowError:  # 0001-01-01T00:00+05:00 or 9999-12-31T23:00-05:00: beyond what UTC can hold
            text = values["submitted_at"]
            problems.append(_too_early(line, text) if text < str(EARLIEST_YEAR) else RowProblem(
                line, "submitted_at", f"{text} is out of range; check the year (write it like 2026-03-01T09:30:00Z)"))
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
