"""refsync: keeps partner referral attribution trustworthy on your CRM, and proves it.

One installed package. The engine and its interfaces live in :mod:`refsync.connector`, the CRM
adapters and sandbox in :mod:`refsync.adapters`, the ledger in :mod:`refsync.state`, and the errors
every layer raises in :mod:`refsync.errors`, below all of them. In the repository these are the
top-level ``connector/``, ``adapters/`` and ``state/`` folders; ``refsync/`` links them (and the
shipped mappings, examples and example config) into one package.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("refsync")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
