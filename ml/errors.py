"""Errors raised by ``ml``: one base class, one subclass per kind of failure."""

from __future__ import annotations

from collections.abc import Iterable

# How many problems a DataValidationError message spells out before summarising the rest.
_SHOWN_PROBLEMS = 5


class MLError(Exception):
    """Base class of every error ``ml`` raises on purpose."""


class DataValidationError(MLError):
    """Input prices are malformed; ``problems`` lists each one by CSV line or ticker."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        shown = "; ".join(self.problems[:_SHOWN_PROBLEMS])
        hidden = len(self.problems) - _SHOWN_PROBLEMS
        more = f"; and {hidden} more" if hidden > 0 else ""
        super().__init__(f"invalid price data: {shown}{more}")


class UnknownTickerError(MLError):
    """Requested tickers are absent from the data; ``tickers`` lists them."""

    def __init__(self, tickers: Iterable[str]) -> None:
        self.tickers: list[str] = list(tickers)
        super().__init__(f"unknown ticker(s): {', '.join(self.tickers)}")


class InsufficientHistoryError(MLError):
    """A price series is too short to compute features or forecast from."""


class ArtifactError(MLError):
    """A stored artifact is missing, tampered with (checksum/signature mismatch) or unloadable."""


class RegistryError(MLError):
    """A model or dataset name or version is unknown or invalid."""
