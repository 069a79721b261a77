"""Errors of the campaign stage: bad configuration, a campaign that cannot start, one that was stopped."""

from __future__ import annotations

from typing import Any

from tiler.errors import DeclouderError


class CampaignError(DeclouderError):
    """A campaign cannot run as asked (its output, its cluster or its resources)."""


class ConfigError(CampaignError):
    """A campaign config file is missing, unreadable, or has a bad or unknown key."""


class LedgerError(CampaignError):
    """The campaign ledger in the output store cannot be read or written."""


class CampaignMismatchError(CampaignError):
    """The output already holds a campaign with different settings: resuming it would mix two campaigns."""


class CampaignInterrupted(CampaignError):  # noqa: N818  (a stop, not a failure: the CLI exits 130)
    """The campaign was stopped (Ctrl-C); the ledger is flushed and a rerun resumes."""

    def __init__(self, message: str, *, report: Any = None) -> None:
        super().__init__(message)
        #: The campaign report as it stood when it stopped (a :class:`campaign.report.CampaignReport`).
        self.report = report
