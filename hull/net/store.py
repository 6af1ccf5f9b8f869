"""What hull.net needs of the engine's state database, as a protocol.

hull.net sits below hull.engine, so it does not import the engine's Database: anything
with execute() and a BEGIN IMMEDIATE transaction() fits (hull.engine.db.Database does).
The tables come from the engine's migration list ("net": net_networks, net_leases,
net_endpoints, net_ports).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs `hull run` ~3 ms: the protocol is for checkers only
if TYPE_CHECKING:
    import sqlite3
    from contextlib import AbstractContextManager
    from typing import Protocol
else:
    Protocol = object


class StateDB(Protocol):
    def execute(
        self, sql: str, params: tuple[object, ...] | dict[str, object] = ()
    ) -> sqlite3.Cursor: ...

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...
