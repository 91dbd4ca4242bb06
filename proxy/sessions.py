"""Sessions and turns: what Galtea's platform does when it runs a conversation against an endpoint.

Lifecycle: create → INITIALIZATION (before the first turn) → CONVERSATION per turn → FINALIZATION when
the session finishes (explicitly, by a conversation end rule, or by a failed turn), exactly once.
Turns of one session run in order (a lock per session); different sessions run concurrently.
State lives in memory and is written through the store's writer thread before a call answers.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic.alias_generators import to_camel

from proxy import jsonbounds
from proxy.auth import new_trace_id
from proxy.engine import CallContext, CallLabel, CallResult, Engine
from proxy.errors import Conflict, InvalidField, NotFound
from proxy.mapping import OUTPUT, RETRIEVAL_CONTEXT, SESSION_ID, SPECIAL_KEYS, TRACES, output_text
from proxy.models import ConnectionType
from proxy.record_mode import RecordMode
from proxy.registry import new_id, now_iso
from proxy.schemas import InferenceResultCreate, SessionCreate, SessionFinish, SessionStatus, SessionUpdate, TurnRequest
from proxy.store import Store, entity_json
from proxy.transports.library import CassetteHandle, CassetteLibrary
from proxy.versions import Version, VersionRegistry

PENDING, COMPLETED, FAILED = SessionStatus.PENDING.value, SessionStatus.COMPLETED.value, SessionStatus.FAILED.value
GENERATED, SKIPPED = "GENERATED", "SKIPPED"  # turn statuses besides FAILED
DEFAULT_STOPPING_REASON = "COMPLETED"


@dataclass
class Session:
    id: str
    version_id: str
    product_id: str
    created_at: str
    cassette_key: str  # fixed at creation: test case id, else customId, else connection name
    trace_id: str = field(default_factory=new_trace_id)
    custom_id: str | None = None
    external_session_id: str | None = None
    test_case_id: str | None = None
    test_id: str | None = None
    run_id: str | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = PENDING
    stopping_reason: str | None = None
    error: str | None = None
    is_production: bool = False
    initialized: bool = False
    finalized: bool = False
    deleted: bool = False

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "versionId": self.version_id,
            "productId": self.product_id,
            "customId": self.custom_id,
            "externalSessionId": self.external_session_id,
            "testCaseId": self.test_case_id,
            "testId": self.test_id,
            "runId": self.run_id,
            "userId": None,  # no Galtea user launches a session here
            "context": context_object(self.context),
            "metadata": self.metadata,
            "status": self.status,
            "stoppingReason": self.stopping_reason,
            "error": self.error,
            "isProduction": self.is_production,
            "isSeed": False,
            "recordingUri": None,
            "createdAt": self.created_at,
            "deletedAt": None,
        }


@dataclass
class Turn:
    """An inference result: one CONVERSATION call, or a turn the client logged itself."""

    id: str
    session_id: str
    index: int
    created_at: str
    input: Any = None
    actual_output: str | None = None
    retrieval_context: str | None = None
    traces: list[dict[str, Any]] = field(default_factory=list)
    latency: float | None = None
    time_to_first_token_ms: float | None = None  # a streamed reply (responseMode sse): its first piece of text
    status: str = GENERATED
    error: str | None = None
    exchange: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        return {
            **self.extra,
            "id": self.id,
            "sessionId": self.session_id,
            "index": self.index,
            "input": self.input,
            "actualOutput": self.actual_output,
            "retrievalContext": self.retrieval_context,
            "traces": self.traces,
            "latency": self.latency,
            "timeToFirstTokenMs": self.time_to_first_token_ms
            if self.time_to_first_token_ms is not None
            else self.extra.get("timeToFirstTokenMs"),
            "status": self.status,
            "error": self.error,
            "exchange": self.exchange,
            "createdAt": self.created_at,
        }


@dataclass
class LifecycleCall:
    """An INITIALIZATION or FINALIZATION call, kept so the inspector can show it."""

    id: str
    session_id: str
    phase: str
    created_at: str
    exchange: dict[str, Any]


class SessionService:
    def __init__(self, store: Store, versions: VersionRegistry, engine: Engine, library: CassetteLibrary) -> None:
        self.store = store
        self.versions = versions
        self.engine = engine
        self.library = library
        self._handles: dict[str, CassetteHandle] = {}  # open cassette per session (not persisted)
        self._sessions: dict[str, Session] = {}
        self._turns: dict[str, Turn] = {}
        self._turns_by_session: dict[str, list[Turn]] = {}
        self._calls_by_session: dict[str, list[LifecycleCall]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._seq = itertools.count(1)

    def load(self) -> None:
        for data in self.store.call(self.store.load, "sessions"):
            session = Session(**data)
            session.context = context_object(session.context)  # stored before contexts were objects
            self._sessions[session.id] = session
        for data in self.store.call(self.store.load, "inference_results"):
            self._index_turn(Turn(**data))
        for data in self.store.call(self.store.load, "lifecycle_calls"):
            call = LifecycleCall(**data)
            self._calls_by_session.setdefault(call.session_id, []).append(call)
        self._seq = itertools.count(len(self._sessions) + len(self._turns) + 1)

    # -- reads -------------------------------------------------------------------------------

    def all(self) -> list[Session]:
        return [s for s in self._sessions.values() if not s.deleted]

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None or session.deleted:
            raise NotFound(f"Session {session_id} not found")
        return session

    def turns(self, session_id: str) -> list[Turn]:
        return list(self._turns_by_session.get(session_id, []))

    def all_turns(self) -> list[Turn]:
        return [t for t in self._turns.values() if not self._sessions[t.session_id].deleted]

    def turn(self, turn_id: str) -> Turn:
        turn = self._turns.get(turn_id)
        if turn is None or self._sessions[turn.session_id].deleted:
            raise NotFound(f"Inference result {turn_id} not found")
        return turn

    def lifecycle_calls(self, session_id: str) -> list[LifecycleCall]:
        return list(self._calls_by_session.get(session_id, []))

    # -- sessions ----------------------------------------------------------------------------

    async def create(self, data: dict[str, Any]) -> Session:
        """The Galtea rules: a non-production session (the default) runs a test case, which provides its
        context; a production one has no test case. A session created COMPLETED or FAILED logs a conversation
        that ran elsewhere: it takes logged inference results, never turns, and has no lifecycle to run."""
        fields = SessionCreate.parse(data)
        version = self._version_for(fields)
        test_case_id, is_production = fields.test_case_id, bool(fields.is_production)
        if is_production and test_case_id:
            raise InvalidField("testCaseId", "is refused on a production session (isProduction: true)")
        if not is_production and not test_case_id:
            raise InvalidField(
                "testCaseId",
                "is required on a non-production session (isProduction defaults to false): give the test case "
                "the session runs, or isProduction: true",
            )
        if test_case_id and fields.context is not None:
            raise InvalidField("context", "is refused when testCaseId is set (the test case provides it)")
        if is_production and fields.run_id:
            raise InvalidField("runId", "is refused on a production session (isProduction: true)")
        status = (fields.status or SessionStatus.PENDING).value
        conversation = self.versions.connection(version, ConnectionType.CONVERSATION)
        session = Session(
            id=new_id("ses"),
            version_id=version.id,
            product_id=version.product_id,
            created_at=now_iso(),
            cassette_key=test_case_id or fields.custom_id or (conversation.name if conversation else version.name),
            custom_id=fields.custom_id,
            test_case_id=test_case_id,
            test_id=fields.test_id or fields.dataset_id,
            run_id=fields.run_id,
            context=context_object(fields.context),
            metadata=dict(fields.metadata or {}),
            status=status,
            is_production=is_production,
            finalized=status != PENDING,
        )
        self._sessions[session.id] = session
        self._handle(session)  # the cassette is opened, and `once` decided, when the session is created
        await self._save(session)
        return session

    def _handle(self, session: Session) -> CassetteHandle:
        handle = self._handles.get(session.id)
        if handle is None:
            conversation = self.versions.connection(self.versions.get(session.version_id), ConnectionType.CONVERSATION)
            mode = self.library.mode_for(conversation.name if conversation else None)
            handle = self._handles[session.id] = self.library.open("sessions", session.cassette_key, mode)
        return handle

    def cassette_handle(self, session_id: str) -> CassetteHandle:
        return self._handle(self.get(session_id))

    def _version_for(self, fields: SessionCreate) -> Version:
        if fields.version_id:
            return self.versions.get(fields.version_id)
        product_id = fields.product_id
        if not product_id:
            raise InvalidField("versionId", "is required (or productId, to use that product's latest version)")
        version = self.versions.latest_for_product(product_id)
        if version is None:
            raise NotFound(f"Product {product_id} has no version")
        return version

    async def update(self, session_id: str, data: dict[str, Any]) -> Session:
        session = self.get(session_id)
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
        await self._save(session)
        return session

    async def delete(self, session_id: str) -> None:
        session = self.get(session_id)
        session.deleted = True
        await self._save(session)

    async def finish(self, session_id: str, data: dict[str, Any]) -> Session:
        """COMPLETED with a stoppingReason, or FAILED with an error; FINALIZATION runs once either way."""
        session = self.get(session_id)
        fields = SessionFinish.parse(data)
        async with self._lock(session_id):
            if session.status == PENDING:
                if fields.error:
                    session.status, session.error = FAILED, fields.error
                else:
                    session.status = COMPLETED
                    session.stopping_reason = fields.stopping_reason or DEFAULT_STOPPING_REASON
            await self._finalize(session)
            await self._save(session)
            await self.library.flush(self._handle(session).name)
        return session

    # -- turns -------------------------------------------------------------------------------

    async def run_turn(self, session_id: str, data: dict[str, Any], mode: RecordMode | None = None) -> Turn:
        """One turn; `mode` (the call's `X-Proxy-Record-Mode`) overrides the cassette's record mode for the
        upstream calls this turn makes (INITIALIZATION, the turn, FINALIZATION when it ends the session)."""
        session = self.get(session_id)
        request = TurnRequest.parse(data)
        turn_input, turn_context = request.input, request.context
        async with self._lock(session_id):
            if session.status != PENDING:
                raise Conflict(f"Session {session_id} is {session.status}: it takes no more turns")
            version = self.versions.get(session.version_id)
            conversation = self.versions.connection(version, ConnectionType.CONVERSATION)
            if conversation is None:
                raise InvalidField("versionId", f"version {version.name!r} has no CONVERSATION connection")
            turn = Turn(
                id=uuid.uuid4().hex,
                session_id=session.id,
                index=len(self._turns_by_session.get(session.id, [])),
                created_at=now_iso(),
                input=turn_input,
            )
            if not session.initialized:
                init_error = await self._initialize(session, version, turn_input, turn_context, mode)
                if init_error is not None:
                    turn.status, turn.error = FAILED, init_error
                    session.status, session.error = FAILED, init_error
                    await self._finish_turn(session, turn, mode)
                    return turn
            ctx = self._context(session, turn.id, turn_input, turn_context, "turn", mode)
            result = await self.engine.call(conversation, ctx)
            self._apply_turn_result(session, turn, result)
            await self._finish_turn(session, turn, mode)
            return turn

    async def log_turn(self, data: dict[str, Any]) -> Turn:
        """POST /inferenceResults: a turn the client ran itself (a finished session takes them too)."""
        fields = InferenceResultCreate.parse(data)
        session = self.get(fields.session_id)
        async with self._lock(session.id):
            turn = Turn(
                id=uuid.uuid4().hex,
                session_id=session.id,
                index=len(self._turns_by_session.get(session.id, [])),
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
            self._index_turn(turn)
            await self._save_turn(turn, session)
        return turn

    # -- lifecycle internals -----------------------------------------------------------------

    async def _initialize(
        self,
        session: Session,
        version: Version,
        turn_input: Any,
        turn_context: dict[str, Any] | None,
        mode: RecordMode | None = None,
    ) -> str | None:
        """Run INITIALIZATION if the version has one; returns the error that failed it, if any."""
        session.initialized = True
        conn = self.versions.connection(version, ConnectionType.INITIALIZATION)
        if conn is None:
            return None
        ctx = self._context(session, uuid.uuid4().hex, turn_input, turn_context, "initialization", mode)
        result = await self.engine.call(conn, ctx)
        await self._record_call(session, ConnectionType.INITIALIZATION.value, result)
        if not result.ok:
            return result.error
        self._absorb_mapped_keys(session, result)
        return None

    async def _finalize(self, session: Session, mode: RecordMode | None = None) -> None:
        if session.finalized:
            return
        session.finalized = True
        version = self.versions.get(session.version_id)
        conn = self.versions.connection(version, ConnectionType.FINALIZATION)
        if conn is None:
            return
        ctx = self._context(session, uuid.uuid4().hex, None, None, "finalization", mode)
        result = await self.engine.call(conn, ctx)
        await self._record_call(session, ConnectionType.FINALIZATION.value, result)

    def _apply_turn_result(self, session: Session, turn: Turn, result: CallResult) -> None:
        turn.exchange = result.to_json()
        turn.latency = round(result.latency_ms, 3)
        turn.time_to_first_token_ms = result.time_to_first_token_ms
        extracted = result.extracted
        if result.ended_by_rule is not None:
            # The endpoint ended the conversation: the session completes with the turns so far.
            turn.status = SKIPPED
            status = result.reply.status if result.reply else "?"
            session.status = COMPLETED
            session.stopping_reason = (
                f"Conversation ended by the endpoint (end rule {result.ended_by_rule + 1}: HTTP {status})"
            )
            return
        if not result.ok:
            turn.status, turn.error = FAILED, result.error
            session.status, session.error = FAILED, result.error
            return
        turn.status = GENERATED
        turn.actual_output = result.output
        if RETRIEVAL_CONTEXT in extracted:
            turn.retrieval_context = output_text(extracted[RETRIEVAL_CONTEXT])
        turn.traces = list(extracted.get(TRACES) or [])
        self._absorb_mapped_keys(session, result)

    def _absorb_mapped_keys(self, session: Session, result: CallResult) -> None:
        """`session_id` becomes the external id (and the customId when there is none); any key that is
        not special becomes session metadata for later templates and URLs."""
        extracted = result.extracted
        if SESSION_ID in extracted and extracted[SESSION_ID] is not None:
            session.external_session_id = output_text(extracted[SESSION_ID])
            if not session.custom_id:
                session.custom_id = session.external_session_id
        for key, value in extracted.items():
            if key not in SPECIAL_KEYS and key != OUTPUT:
                session.metadata[key] = value

    def _context(
        self,
        session: Session,
        inference_id: str,
        turn_input: Any,
        turn_context: dict[str, Any] | None,
        kind: str,
        mode: RecordMode | None = None,
    ) -> CallContext:
        context = template_context(session.context)
        if turn_context:
            context = {**context, **turn_context}
        past = [
            {"input": t.input, "output": t.actual_output}
            for t in self._turns_by_session.get(session.id, [])
            if t.status == GENERATED
        ]
        return CallContext(
            input=turn_input,
            context=context,
            session_id=session.external_session_id or session.custom_id,
            galtea_session_id=session.id,
            test_case_id=session.test_case_id,
            test_id=session.test_id,
            inference_result_id=inference_id,
            metadata=dict(session.metadata),
            past_turns=past,
            trace_id=session.trace_id,
            cassette=self._handle(session).for_call(mode),
            label=CallLabel(kind, session.id),
        )

    async def _finish_turn(self, session: Session, turn: Turn, mode: RecordMode | None = None) -> None:
        self._index_turn(turn)
        if session.status != PENDING:
            await self._finalize(session, mode)
        await self._save_turn(turn, session)
        if session.status != PENDING:
            await self.library.flush(self._handle(session).name)

    async def _record_call(self, session: Session, phase: str, result: CallResult) -> None:
        call = LifecycleCall(uuid.uuid4().hex, session.id, phase, now_iso(), result.to_json())
        self._calls_by_session.setdefault(session.id, []).append(call)
        await self.store.write(self.store.put, "lifecycle_calls", call.id, next(self._seq), entity_json(call))

    def _index_turn(self, turn: Turn) -> None:
        self._turns[turn.id] = turn
        self._turns_by_session.setdefault(turn.session_id, []).append(turn)

    def _lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    async def _save(self, session: Session) -> None:
        await self.store.write(self.store.put, "sessions", session.id, next(self._seq), entity_json(session))

    async def _save_turn(self, turn: Turn, session: Session) -> None:
        rows = [
            ("inference_results", turn.id, next(self._seq), entity_json(turn)),
            ("sessions", session.id, next(self._seq), entity_json(session)),
        ]
        await self.store.write(self.store.put_many, rows)


def _text_or_none(value: Any) -> str | None:
    return None if value is None else output_text(value)


def context_object(context: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A session's context as Galtea stores it: an object, plain text as `{"value": "<text>"}`."""
    return {"value": context} if isinstance(context, str) else context


def template_context(context: dict[str, Any] | None) -> dict[str, Any]:
    """What templates see as `context`: the stored object; when its `value` text holds a JSON object, that
    object's fields too (`context.<field>`), beside `context.value`."""
    if not context:
        return {}
    text = context.get("value")
    if isinstance(text, str):
        try:
            parsed = jsonbounds.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return {**parsed, **context}
    return dict(context)
