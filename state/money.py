"""Money as integers of a currency's minor units, and back to the contract's decimal strings.

Below the engine so the ledger's views and notices can show amounts without importing ``connector``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

# ISO 4217 currencies whose minor unit is not the cent (the others have two decimals).
MINOR_DIGITS = {"BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
                "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
                "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3, "CLF": 4}


def minor_digits(currency: str) -> int:
    return MINOR_DIGITS.get(currency.upper(), 2)


def to_minor(amount: Decimal, currency: str) -> int:
    """An amount in major units as minor units (half up past the currency's decimals)."""
    return int((amount * 10 ** minor_digits(currency)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def as_decimal_text(minor: int, currency: str) -> str:
    """Minor units as the contract's decimal string: 123450 USD -> "1234.50", 500 JPY -> "500"."""
    digits = minor_digits(currency)
    return str(Decimal(minor).scaleb(-digits).quantize(Decimal(1).scaleb(-digits)))
