"""Sessions and turns: the service the API and `proxy run` drive, its entities, cache and tables, the request
bodies it takes, and the datasets `proxy run` reads. Imports from cassettes, engine, connections and below;
never from the server or the CLI."""

from proxy.sessions.entities import COMPLETED, FAILED, GENERATED, PENDING, SKIPPED, LifecycleCall, Session, Turn
from proxy.sessions.service import SessionService, TurnDone

__all__ = [
    "COMPLETED",
    "FAILED",
    "GENERATED",
    "PENDING",
    "SKIPPED",
    "LifecycleCall",
    "Session",
    "SessionService",
    "Turn",
    "TurnDone",
]
