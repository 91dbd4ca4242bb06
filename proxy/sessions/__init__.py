"""Sessions and turns: the service the API and `proxy run` drive, its entities, cache and tables."""

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
