"""Sessions and turns: what Galtea's platform does when it runs a conversation against an endpoint.

Lifecycle: create → INITIALIZATION (before the first turn) → CONVERSATION per turn → FINALIZATION when
the session finishes (explicitly, by a conversation end rule, or by a failed turn), exactly once.
Turns of one session run in order (a lock per session); different sessions run concurrently.
Recent sessions are held in a bounded cache (`SessionCache`); their rows go to the database through the
store's one batching queue without the caller waiting for the commit (only recorded exchanges wait: the
cassette journal's commit comes before the answer). Reads go through the same queue, so they see every
change queued before them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic.alias_generators import to_camel

from proxy.cassettes.library import CassetteLibrary
from proxy.config.record_mode import RecordMode
from proxy.config.settings import DEFAULT_SESSION_CACHE_SIZE
from proxy.connections.mapping import output_text
from proxy.connections.spec import ConnectionType
from proxy.connections.versions import Version, VersionRegistry
from proxy.engine.call import Engine
from proxy.engine.results import CallResult, new_call_id
from proxy.errors import Conflict, InvalidField, NotFound
from proxy.sessions import tables
from proxy.sessions.cache import Active, SessionCache
from proxy.sessions.checks import new_session
from proxy.sessions.context import call_context
from proxy.sessions.entities import (
    COMPLETED,
    DEFAULT_STOPPING_REASON,
    FAILED,
    GENERATED,
    PENDING,
    LifecycleCall,
    Session,
    Turn,
    context_object,
    encode,
)
from proxy.sessions.lifecycle import absorb_mapped_keys, apply_turn_result
from proxy.sessions.requests import InferenceResultCreate, SessionCreate, SessionFinish, SessionUpdate, TurnRequest
from proxy.sessions.tables import ListQuery, Rows
from proxy.storage.entity_tables import now_iso
from proxy.storage.store import Store


@dataclass
class TurnDone:
    """A turn as it ended: the turn, its session after it, and the turn's API answer, encoded once (its row
    stores the same text)."""

    turn: Turn
    session: Session
    answer: str

    def route_answer(self) -> str:
        """The turn route's answer: the inference result and the session's status after it."""
        extra = encode({"sessionStatus": self.session.status, "stoppingReason": self.session.stopping_reason})
        return f"{self.answer[:-1]},{extra[1:]}"


class SessionService:
    def __init__(
        self,
        store: Store,
        versions: VersionRegistry,
        engine: Engine,
        library: CassetteLibrary,
        cache_size: int = DEFAULT_SESSION_CACHE_SIZE,
    ) -> None:
        self.store = store
        self.versions = versions
        self.engine = engine
        self.library = library
        self.cache = SessionCache(cache_size)

    def load(self) -> None:
        """Start-up: the tables are made ready (old ones migrated); no session is read until asked for."""
        self.store.call(tables.migrate, self.store.db)

    async def close(self) -> None:
        await self.store.drain()

    # -- reads -------------------------------------------------------------------------------

    async def _read(self, fn: Any, *args: Any) -> Any:
        return await self.store.write(fn, self.store.db.conn, *args)

    async def get(self, session_id: str) -> Session:
        active = self.cache.get(session_id)
        session: Session | None
        if active is not None:
            session = active.session
        else:
            data = await self._read(tables.session_data, session_id)
            session = Session.from_json(data) if data is not None else None
        if session is None or session.deleted:
            raise NotFound(f"Session {session_id} not found")
        return session

    async def list_api(self, query: ListQuery) -> list[dict[str, Any]]:
        return [s.to_api() for s in await self._sessions(query)]

    async def recent(self, limit: int) -> list[Session]:
        """The newest sessions."""
        return await self._sessions(ListQuery(limit=limit))

    async def _sessions(self, query: ListQuery) -> list[Session]:
        return [Session.from_json(data) for data in await self._read(tables.list_sessions, query)]

    async def missing(self, session_ids: list[str]) -> list[str]:
        """Those of `session_ids` that name no live session."""
        if not session_ids:
            return []
        known = await self._read(tables.live_session_ids, session_ids)
        return [i for i in session_ids if i not in known]

    async def list_turn_answers(self, query: ListQuery) -> list[str]:
        """The turns' API answers (JSON text), as stored."""
        answers: list[str] = await self._read(tables.list_turns, query)
        return answers

    async def missing_turns(self, turn_ids: list[str]) -> list[str]:
        if not turn_ids:
            return []
        known = await self._read(tables.live_turn_ids, turn_ids)
        return [i for i in turn_ids if i not in known]

    async def turn_answer(self, turn_id: str) -> str:
        answer: str | None = await self._read(tables.turn_answer, turn_id)
        if answer is None:
            raise NotFound(f"Inference result {turn_id} not found")
        return answer

    async def turns(self, session_id: str) -> list[Turn]:
        return [Turn.from_api(json.loads(data)) for data in await self._read(tables.session_turns, session_id)]

    async def turn_counts(self, session_ids: list[str]) -> dict[str, int]:
        counts: dict[str, int] = await self._read(tables.turn_counts, session_ids) if session_ids else {}
        return counts

    async def lifecycle_calls(self, session_id: str) -> list[LifecycleCall]:
        return [LifecycleCall(**json.loads(data)) for data in await self._read(tables.session_calls, session_id)]

    async def cassette_name(self, session_id: str) -> str:
        active = await self._active(session_id)
        assert active.handle is not None
        return active.handle.name

    # -- the cache ---------------------------------------------------------------------------

    async def _active(self, session_id: str) -> Active:
        """The session in memory, read (with its turn count and past turns) when it is not."""
        active = self.cache.get(session_id)
        if active is None:
            found = await self._read(tables.session_with_turns, session_id)
            if found is None:
                raise NotFound(f"Session {session_id} not found")
            data, answers = found
            session = Session.from_json(data)
            turns = [json.loads(answer) for answer in answers]
            past = [{"input": t["input"], "output": t["actualOutput"]} for t in turns if t["status"] == GENERATED]
            active = self.cache.put(self._opened(Active(session, len(turns), past)))
        if active.session.deleted:
            raise NotFound(f"Session {session_id} not found")
        return active

    def _opened(self, active: Active) -> Active:
        """The session's cassette, opened (and `once` decided) when the session first enters memory; when it
        comes back after an eviction, the opening it left behind."""
        session = active.session
        active.handle = self.cache.take_handle(session.id)
        if active.handle is None:
            version = self.versions.get(session.version_id)
            conversation = self.versions.connection(version, ConnectionType.CONVERSATION)
            mode = self.library.mode_for(conversation.name if conversation else None)
            active.handle = self.library.open("sessions", session.cassette_key, mode)
        return active

    async def _save(self, active: Active, turns: tuple[tuple[Any, ...], ...] = ()) -> None:
        """Queue the rows (no wait for their commit), held back only while the queue is over its bound; the
        session's row only when it changed (most turns leave their session as it was)."""
        data = active.session.to_json()
        sessions = [] if data == active.saved else [tables.session_row(active.session, data)]
        active.saved = data
        if sessions or turns:
            self.store.enqueue(tables.put, self.store.db.conn, Rows(sessions, list(turns)))
        await self.store.room()

    # -- sessions ----------------------------------------------------------------------------

    async def create(self, data: dict[str, Any]) -> Session:
        session = new_session(SessionCreate.parse(data), self.versions)
        active = self.cache.put(self._opened(Active(session, 0, [])))  # the cassette opens with the session
        await self._save(active)
        return session

    async def update(self, session_id: str, data: dict[str, Any]) -> Session:
        active = await self._active(session_id)
        session = active.session
        fields = SessionUpdate.parse(data)
        given = fields.given()
        if "custom_id" in given:
            session.custom_id = fields.custom_id
        if "metadata" in given:
            session.metadata = dict(fields.metadata or {})
        if "context" in given:
            session.context = context_object(fields.context)
        if "status" in given and fields.status is not None:
            session.status = fields.status.value
        if "stopping_reason" in given:
            session.stopping_reason = fields.stopping_reason
        if "error" in given:
            session.error = fields.error
        await self._save(active)
        return session

    async def delete(self, session_id: str) -> None:
        active = await self._active(session_id)
        active.session.deleted = True
        await self._save(active)

    async def finish(self, session_id: str, data: dict[str, Any]) -> Session:
        """COMPLETED with a stoppingReason, or FAILED with an error; FINALIZATION runs once either way."""
        active = await self._active(session_id)
        session = active.session
        fields = SessionFinish.parse(data)
        async with active.hold():
            if session.status == PENDING:
                if fields.error:
                    session.status, session.error = FAILED, fields.error
                else:
                    session.status = COMPLETED
                    session.stopping_reason = fields.stopping_reason or DEFAULT_STOPPING_REASON
            await self._finalize(active)
            await self._save(active)
            await self.library.flush(self._name(active))
        return session

    # -- turns -------------------------------------------------------------------------------

    async def run_turn(self, session_id: str, data: dict[str, Any], mode: RecordMode | None = None) -> TurnDone:
        """One turn; `mode` (the call's `X-Proxy-Record-Mode`) overrides the cassette's record mode for the
        upstream calls this turn makes (INITIALIZATION, the turn, FINALIZATION when it ends the session)."""
        active = await self._active(session_id)
        session = active.session
        request = TurnRequest.parse(data)
        turn_input, turn_context = request.input, request.context
        async with active.hold():  # held in memory until the turn is done
            if session.status != PENDING:
                raise Conflict(f"Session {session_id} is {session.status}: it takes no more turns")
            version = self.versions.get(session.version_id)
            conversation = self.versions.connection(version, ConnectionType.CONVERSATION)
            if conversation is None:
                raise InvalidField("versionId", f"version {version.name!r} has no CONVERSATION connection")
            turn = Turn(new_call_id(), session.id, active.turn_count, now_iso(), turn_input)
            if not session.initialized:
                init_error = await self._initialize(active, version, turn_input, turn_context, mode)
                if init_error is not None:
                    turn.status, turn.error = FAILED, init_error
                    session.status, session.error = FAILED, init_error
                    return await self._finish_turn(active, turn, mode)
            ctx = call_context(active, turn.id, turn_input, turn_context, "turn", mode)
            result = await self.engine.call(conversation, ctx)
            apply_turn_result(session, turn, result)
            return await self._finish_turn(active, turn, mode)

    async def log_turn(self, data: dict[str, Any]) -> TurnDone:
        """POST /inferenceResults: a turn the client ran itself (a finished session takes them too)."""
        fields = InferenceResultCreate.parse(data)
        active = await self._active(fields.session_id)
        async with active.hold():
            turn = Turn(
                id=new_call_id(),
                session_id=active.session.id,
                index=active.turn_count,
                created_at=now_iso(),
                input=fields.input,
                actual_output=_text_or_none(fields.actual_output),
                retrieval_context=_text_or_none(fields.retrieval_context),
                traces=list(fields.traces or []),
                latency=fields.latency,
                status=fields.status.value if fields.status else GENERATED,
                error=fields.error,
                extra={to_camel(k): v for k, v in (fields.model_extra or {}).items()},
            )
            return await self._done(active, turn)

    # -- lifecycle internals -----------------------------------------------------------------

    async def _initialize(
        self,
        active: Active,
        version: Version,
        turn_input: Any,
        turn_context: dict[str, Any] | None,
        mode: RecordMode | None = None,
    ) -> str | None:
        """Run INITIALIZATION if the version has one; returns the error that failed it, if any."""
        session = active.session
        session.initialized = True
        conn = self.versions.connection(version, ConnectionType.INITIALIZATION)
        if conn is None:
            return None
        ctx = call_context(active, new_call_id(), turn_input, turn_context, "initialization", mode)
        result = await self.engine.call(conn, ctx)
        self._record_call(session, ConnectionType.INITIALIZATION.value, result)
        if not result.ok:
            return result.error
        absorb_mapped_keys(session, result)
        return None

    async def _finalize(self, active: Active, mode: RecordMode | None = None) -> None:
        session = active.session
        if session.finalized:
            return
        session.finalized = True
        version = self.versions.get(session.version_id)
        conn = self.versions.connection(version, ConnectionType.FINALIZATION)
        if conn is None:
            return
        ctx = call_context(active, new_call_id(), None, None, "finalization", mode)
        result = await self.engine.call(conn, ctx)
        self._record_call(session, ConnectionType.FINALIZATION.value, result)

    async def _finish_turn(self, active: Active, turn: Turn, mode: RecordMode | None = None) -> TurnDone:
        if active.session.status != PENDING:
            await self._finalize(active, mode)
        done = await self._done(active, turn)
        if active.session.status != PENDING:
            await self.library.flush(self._name(active))
        return done

    async def _done(self, active: Active, turn: Turn) -> TurnDone:
        """Count the turn in, and queue its row with its session's."""
        active.turn_count += 1
        if turn.status == GENERATED:
            active.past.append({"input": turn.input, "output": turn.actual_output})
        answer = encode(turn.to_api())
        await self._save(active, turns=(tables.turn_row(turn, answer),))
        return TurnDone(turn, active.session, answer)

    def _record_call(self, session: Session, phase: str, result: CallResult) -> None:
        call = LifecycleCall(new_call_id(), session.id, phase, now_iso(), result.to_json())
        row = tables.call_row(call.id, session.id, phase, call.created_at, encode(call.__dict__))
        self.store.enqueue(tables.put, self.store.db.conn, Rows(calls=[row]))

    @staticmethod
    def _name(active: Active) -> str:
        assert active.handle is not None
        return active.handle.name


def _text_or_none(value: Any) -> str | None:
    return None if value is None else output_text(value)
