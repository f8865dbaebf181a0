"""Capabilities a plug-in may offer that code outside connectors/ looks for.

They live in triage_core, not beside the Connector protocol in connectors/base.py, so that trainer (which must not
import connectors) can ask an object for a capability with `isinstance` instead of probing it with `getattr`.
connectors.base re-exports them with the connector-only capabilities.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol, runtime_checkable

from .records import Record


@runtime_checkable
class ClosedTicketSource(Protocol):
    """Optional: a connector that can list closed tickets (labelled records of DESIGN.md) for retraining.

    Nightly retraining (`trainer.retrain.Retrainer`) asks every enabled connector that is one::

        class MyConnector:
            def closed_tickets(self, since):
                for issue in self.api.search(closed_after=since):
                    yield {"id": issue.key, "text": issue.text, "labels": {"category": issue.category},
                           "source": "myitsm", "closed_at": issue.closed_at.isoformat()}

        isinstance(MyConnector(), ClosedTicketSource)  # True: the method is all it takes
    """

    def closed_tickets(self, since: Any) -> Iterable[Record]:
        """Labelled-ticket records closed after `since`; raise NotImplementedError where the ITSM has none.

        :param since: a timezone-aware UTC datetime: the start of the last promoting run, or the look-back window.
        :returns: labelled-ticket records (`triage_core.records.Record`, DESIGN.md); labels outside the taxonomy
            are dropped and counted later.
        """
        ...


__all__ = ["ClosedTicketSource"]
