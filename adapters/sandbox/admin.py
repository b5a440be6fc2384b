"""The admin plane every sandbox emulator offers: it plays a sales rep and the CRM itself.

The same operations are exposed in-process (for tests) and over HTTP under the emulator's admin
base URL (for the demo and outside scripts); see README "Sandbox admin plane".
"""

from __future__ import annotations

from typing import Any, Protocol


class SandboxAdmin(Protocol):
    def create_record(self, object_name: str, fields: dict[str, Any], owner_id: str | None = None) -> str:
        """Create a record as a sales rep would; returns its id."""
        ...

    def get_record(self, object_name: str, record_id: str) -> dict[str, Any] | None:
        """The record's raw stored fields (None when it does not exist or was deleted)."""
        ...

    def set_field(self, object_name: str, record_id: str, field: str, value: Any, by: str = "rep") -> None:
        """Edit (or blank, with value None/"") a field, as user ``by``."""
        ...

    def change_owner(self, object_name: str, record_id: str, owner_id: str) -> None: ...

    def delete_record(self, object_name: str, record_id: str) -> None: ...

    def merge(self, object_name: str, survivor_id: str, loser_id: str) -> str:
        """Merge ``loser_id`` into ``survivor_id``; returns the surviving id (HubSpot mints a new one)."""
        ...

    def convert_lead(self, lead_id: str, opportunity_name: str | None = None) -> dict[str, str]:
        """Salesforce: convert a lead; returns {"account": id, "contact": id, "opportunity": id}.
        HubSpot: creates a deal associated with the contact; returns {"contact": id, "deal": id}."""
        ...

    def move_stage(
        self, deal_id: str, stage: str, amount: float | None = None, close_date: str | None = None
    ) -> None:
        """Move a deal-like record to the stage with this label (history recorded)."""
        ...

    def remove_field(self, object_name: str, field: str) -> None:
        """Delete a custom field / property from the schema (mapping drift)."""
        ...

    def restore_field(self, object_name: str, field: str) -> None:
        """Put a field removed by :meth:`remove_field` back (its values stay blank)."""
        ...

    def create_field(self, object_name: str, field: str, kind: str = "text", label: str = "") -> None:
        """Create a custom field / property as an admin does in Setup or Settings: ``kind`` "text" (a
        Salesforce Text(255), a HubSpot single-line text) or "number" (a Salesforce Currency(16, 2), a
        HubSpot number). Gone again after :meth:`reset`."""
        ...

    def set_faults(self, **rates: float) -> None:
        """Fault injection by probability: rate_limit, server_error, slow, drop, lock; retry_after=s."""
        ...

    def hold_clock(self, held: bool = True) -> None:
        """Every write carries one timestamp until released (``held=False``), as in a bulk import or a
        mass update, where many records share a modification time."""
        ...

    def calls(self) -> dict[str, int]:
        """API calls served, by kind (admin calls not counted)."""
        ...

    def count_values(self, object_name: str, field: str) -> dict[str, int]:
        """How many live records of ``object_name`` carry each non-empty value of ``field`` (a test
        reads duplicates off it: a referral id on two leads)."""
        ...

    def reset(self) -> None:
        """Forget all records, faults and counters."""
        ...
