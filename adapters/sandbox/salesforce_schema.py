"""The Salesforce emulator's org schema: describe bodies shaped like a live org's.

Lead and Opportunity come from describes recorded from a real org (``salesforce_describe.json``,
stored as differences from one field template) plus refsync's custom fields; Contact, Account,
User and OpportunityHistory are smaller, built from the same template. Field lookups are
case-insensitive, as Salesforce's are.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("salesforce_describe.json")

KEY_PREFIX = {"Lead": "00Q", "Contact": "003", "Account": "001", "Opportunity": "006",
              "OpportunityHistory": "008", "User": "005", "OpportunityStage": "01J"}
STAGES: list[tuple[str, int, bool, bool]] = [  # label, default probability, closed, won
    ("Prospecting", 10, False, False), ("Qualification", 10, False, False), ("Needs Analysis", 20, False, False),
    ("Value Proposition", 50, False, False), ("Id. Decision Makers", 60, False, False),
    ("Perception Analysis", 70, False, False), ("Proposal/Price Quote", 75, False, False),
    ("Negotiation/Review", 90, False, False), ("Closed Won", 100, True, True), ("Closed Lost", 0, True, False),
]
READ_ONLY = ("OpportunityHistory", "OpportunityStage")
REFERRAL_FIELDS = ["Referral_Id__c", "Referral_Partner__c", "Referral_Source__c", "Referral_Medium__c",
                   "Referral_Campaign__c", "Referral_Submitted_At__c"]

_TYPES = {  # describe type -> (soapType, length)
    "id": ("tns:ID", 18), "reference": ("tns:ID", 18), "string": ("xsd:string", 255),
    "email": ("xsd:string", 80), "phone": ("xsd:string", 40), "boolean": ("xsd:boolean", 0),
    "datetime": ("xsd:dateTime", 0), "date": ("xsd:date", 0), "currency": ("xsd:double", 0),
    "percent": ("xsd:double", 0), "int": ("xsd:int", 0), "double": ("xsd:double", 0), "picklist": ("xsd:string", 255),
}


def _simple(name: str, kind: str, *, label: str = "", readonly: bool = False, required: bool = False,
            refs: tuple[str, ...] = (), length: int | None = None, custom: bool = False,
            **extra: Any) -> dict[str, Any]:
    soap, default_length = _TYPES[kind]
    size = default_length if length is None else length
    field: dict[str, Any] = {
        "name": name, "label": label or name, "type": kind, "soapType": soap, "length": size,
        "byteLength": size * 3, "createable": not readonly, "updateable": not readonly,
        "nillable": not required and kind != "boolean", "custom": custom, "referenceTo": list(refs),
        "relationshipName": name[:-2] if refs and name.endswith("Id") else None,
        "idLookup": kind == "id", "defaultedOnCreate": readonly or kind == "boolean",
    }
    field.update(extra)
    return field


def custom_referral_fields() -> list[dict[str, Any]]:
    """refsync's fields as an admin creates them: the external id, four text fields, a datetime."""
    fields = [_simple("Referral_Id__c", "string", label="Referral Id", length=26, custom=True,
                      externalId=True, unique=True, idLookup=True, caseSensitive=False)]
    for name in ("Partner", "Source", "Medium", "Campaign"):
        fields.append(_simple(f"Referral_{name}__c", "string", label=f"Referral {name}", custom=True))
    fields.append(_simple("Referral_Submitted_At__c", "datetime", label="Referral Submitted At", custom=True))
    return fields


def _system(prefix_label: str) -> list[dict[str, Any]]:
    return [
        _simple("Id", "id", label=f"{prefix_label} ID", readonly=True, required=True),
        _simple("IsDeleted", "boolean", label="Deleted", readonly=True),
        _simple("CreatedDate", "datetime", label="Created Date", readonly=True, required=True),
        _simple("CreatedById", "reference", label="Created By ID", readonly=True, refs=("User",)),
        _simple("LastModifiedDate", "datetime", label="Last Modified Date", readonly=True, required=True),
        _simple("LastModifiedById", "reference", label="Last Modified By ID", readonly=True, refs=("User",)),
        _simple("SystemModstamp", "datetime", label="System Modstamp", readonly=True, required=True),
    ]


def _synthetic() -> dict[str, list[dict[str, Any]]]:
    owner = _simple("OwnerId", "reference", label="Owner ID", refs=("User", "Group"))
    return {
        "Contact": [*_system("Contact"), _simple("MasterRecordId", "reference", readonly=True, refs=("Contact",)),
                    _simple("AccountId", "reference", refs=("Account",)), _simple("FirstName", "string", length=40),
                    _simple("LastName", "string", length=80, required=True), _simple("Email", "email"),
                    owner],
        "Account": [*_system("Account"), _simple("MasterRecordId", "reference", readonly=True, refs=("Account",)),
                    _simple("Name", "string", required=True), owner],
        "User": [*_system("User"), _simple("Name", "string", readonly=True), _simple("Username", "string"),
                 _simple("IsActive", "boolean")],
        "OpportunityStage": [
            *_system("Opportunity Stage"), _simple("MasterLabel", "string", readonly=True),
            _simple("ApiName", "string", readonly=True), _simple("IsActive", "boolean", readonly=True),
            _simple("IsClosed", "boolean", readonly=True), _simple("IsWon", "boolean", readonly=True),
            _simple("SortOrder", "int", readonly=True), _simple("DefaultProbability", "percent", readonly=True),
        ],
        "OpportunityHistory": [
            *[f for f in _system("Opportunity History") if f["name"] not in ("LastModifiedDate", "LastModifiedById")],
            _simple("OpportunityId", "reference", readonly=True, refs=("Opportunity",)),
            _simple("StageName", "picklist", readonly=True), _simple("Amount", "currency", readonly=True),
            _simple("Probability", "percent", readonly=True), _simple("CloseDate", "date", readonly=True),
        ],
    }


class OrgSchema:
    """Describe bodies by object, and the field lookups the emulator's endpoints share."""

    def __init__(self) -> None:
        data = json.loads(DATA.read_text())
        self.template: dict[str, Any] = data["field_template"]
        self.describes: dict[str, dict[str, Any]] = {}
        self.removed: dict[tuple[str, str], dict[str, Any]] = {}  # (object, field lowercased) -> its describe
        lead_top = data["objects"]["Lead"]["top"]
        for name, obj in data["objects"].items():
            fields = [self._full(f) for f in obj["fields"]]
            fields += [self._full(f) for f in custom_referral_fields()]
            if name == "Opportunity":
                fields.append(self._full(_simple("CurrencyIsoCode", "picklist", label="Opportunity Currency",
                                                 picklistValues=[self._pick("USD", True), self._pick("EUR")])))
            self.describes[name] = {**obj["top"], "fields": fields}
        for name, simple_fields in _synthetic().items():
            top = copy.deepcopy(lead_top)
            top.update(name=name, label=name, labelPlural=name + "s", keyPrefix=KEY_PREFIX[name],
                       mergeable=name in ("Contact", "Account"), urls={}, recordTypeInfos=[],
                       createable=name not in READ_ONLY, updateable=name not in READ_ONLY)
            self.describes[name] = {**top, "fields": [self._full(f) for f in simple_fields]}

    @staticmethod
    def _pick(value: str, default: bool = False) -> dict[str, Any]:
        return {"active": True, "defaultValue": default, "label": value, "validFor": None, "value": value}

    def _full(self, diff: dict[str, Any]) -> dict[str, Any]:
        field = copy.deepcopy(self.template)
        field.update(diff)
        return field

    def objects(self) -> list[str]:
        return list(self.describes)

    def object_name(self, name: str) -> str | None:
        """The canonical object name, case-insensitively (None for an unknown object)."""
        for known in self.describes:
            if known.lower() == name.lower():
                return known
        return None

    def fields(self, obj: str) -> dict[str, dict[str, Any]]:
        return {f["name"]: f for f in self.describes[obj]["fields"]}

    def field(self, obj: str, name: str) -> dict[str, Any] | None:
        """A field's describe entry, case-insensitively."""
        lowered = name.lower()
        for field in self.describes[obj]["fields"]:
            if field["name"].lower() == lowered:
                return field
        return None

    def type_of(self, obj: str, name: str) -> str:
        field = self.field(obj, name)
        return str(field["type"]) if field else "string"

    def remove_field(self, obj: str, name: str) -> bool:
        field = self.field(obj, name)
        if field is None:
            return False
        self.describes[obj]["fields"] = [f for f in self.describes[obj]["fields"] if f is not field]
        self.removed[(obj, name.lower())] = field
        return True

    def create_field(self, obj: str, name: str, kind: str, label: str = "") -> None:
        """A custom field: "text" is Text(255), "number" Currency(16, 2) (describe type ``currency``)."""
        if kind not in ("text", "number"):
            raise ValueError(f"kind {kind!r}: use one of text, number")
        field = _simple(name, "string" if kind == "text" else "currency", custom=True,
                        label=label or name.removesuffix("__c").replace("_", " "))
        if kind == "number":
            field.update(precision=18, scale=2)
        self.describes[obj]["fields"].append(self._full(field))

    def restore_field(self, obj: str, name: str) -> bool:
        field = self.removed.pop((obj, name.lower()), None)
        if field is None:
            return False
        self.describes[obj]["fields"].append(field)
        return True

    def describe_body(self, obj: str, version: str, host: str) -> dict[str, Any]:
        """The describe as served: URLs carry the requested API version and this host."""
        text = json.dumps(self.describes[obj])
        text = text.replace("vxx.0", f"v{version}").replace("https://orgname.my.salesforce.com", f"https://{host}")
        return dict(json.loads(text))
