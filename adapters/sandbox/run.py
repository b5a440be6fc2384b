"""Starting both emulators together: for `refsync sandbox`, the demo and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refsync.adapters.sandbox.hubspot_emulator import HubSpotEmulator
from refsync.adapters.sandbox.salesforce_emulator import SalesforceEmulator


@dataclass
class RunningSandbox:
    salesforce: SalesforceEmulator
    hubspot: HubSpotEmulator

    def info(self) -> dict[str, Any]:
        """What `refsync sandbox` prints: where each CRM listens and what it accepts."""
        return {
            "salesforce": {
                "base_url": self.salesforce.base_url,
                "instance_url": self.salesforce.base_url,
                "session_id": self.salesforce.session_id,
                "admin_url": self.salesforce.admin_url,
                "ca_file": str(self.salesforce.ca_path),
            },
            "hubspot": {
                "base_url": self.hubspot.base_url,
                "access_token": self.hubspot.access_token,
                "admin_url": self.hubspot.admin_url,
            },
            "ca_file": str(self.salesforce.ca_path),
        }

    def stop(self) -> None:
        self.salesforce.stop()
        self.hubspot.stop()


def start_sandbox(directory: Path, *, host: str = "127.0.0.1", salesforce_port: int = 0,
                  hubspot_port: int = 0, seed: int | None = None) -> RunningSandbox:
    directory.mkdir(parents=True, exist_ok=True)
    salesforce = SalesforceEmulator(host=host, port=salesforce_port, tls_dir=directory)
    salesforce.start()
    hubspot = HubSpotEmulator(host=host, port=hubspot_port, seed=seed)
    hubspot.start()
    return RunningSandbox(salesforce, hubspot)
