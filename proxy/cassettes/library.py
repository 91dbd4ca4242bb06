"""The cassettes of one server: opening (where record modes decide), recording with a journal, flushing.

Durability: a recorded interaction is committed to the SQLite journal before its response returns;
cassette files are rewritten atomically when a session finishes, periodically and on shutdown;
start-up folds whatever the journal holds into the files. A `kill -9` therefore loses no
acknowledged exchange and never leaves half a cassette. A journal row names its cassette file by
absolute path, since one data dir may serve several cassettes folders: start-up folds in only the rows
of its own folder and keeps the others for a server started on theirs (writing into a folder another
running server is using could undo its flushes).

Layout under the cassettes folder: `sessions/<session key>.yaml` (test case id, else customId, else
connection name), `connections/<connection name>.yaml` (testConnection and the forward route),
`connectors/<connector name>.yaml`; a key that is not lower-case and file-safe is named by
`cassette_names.file_name` (safe form plus a hash of the key), so distinct keys never share a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from proxy.cassettes.cassette import Cassette, Interaction, identities, identity, load_interactions, parse_interactions
from proxy.cassettes.files import remove_temp_files, update_cassette
from proxy.cassettes.handles import CassetteHandle, why_not_recorded
from proxy.cassettes.journal import Journal
from proxy.cassettes.matching import MatchRules, RecordedRequest, describe_difference, similarity
from proxy.cassettes.names import file_name
from proxy.cassettes.parse_cache import ParseCache
from proxy.cassettes.usage import create_usage_table, note_use
from proxy.config.expiry import OnExpired, describe_age, newest_recording
from proxy.config.record_mode import RecordMode
from proxy.config.settings import DEFAULT_FLUSH_INTERVAL_S, USAGE_REFRESH_S
from proxy.engine.transports import CassetteMiss, CassetteRefused
from proxy.storage.store import Store

log = logging.getLogger("proxy.cassettes")


class CassetteLibrary:
    def __init__(
        self,
        root: Path,
        store: Store,
        rules: MatchRules | None = None,
        default_mode: RecordMode = RecordMode.ONCE,
        replay_latency: bool = False,
        replay_speed: float = 1.0,
        max_age_s: float | None = None,
        on_expired: OnExpired = OnExpired.WARN,
        cache: ParseCache | None = None,
    ) -> None:
        self.root = root
        self.cache = cache  # parsed cassettes, in the data dir: loads skip YAML parsing
        self._journal_root = root.resolve()
        self.store = store
        self.journal = Journal(store)
        store.call(create_usage_table, store)
        self.rules = rules or MatchRules()
        self.default_mode = default_mode
        self.replay_latency = replay_latency
        self.replay_speed = replay_speed  # recorded delays are divided by it
        self._cassettes: dict[str, Cassette] = {}
        self._loading: dict[str, asyncio.Future[Cassette]] = {}
        self._server_handles: dict[tuple[str, str], CassetteHandle] = {}
        self.scope: str | None = None  # see set_scope
        self._existed_at_first_opening: dict[str, bool] = {}  # server handles' cassettes, for `once`
        self._reset_this_run: set[str] = set()
        self._pending_reset: set[str] = set()  # `all`: cleared at its first recording in this server run
        self._files = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proxy-cassettes")
        self.connection_modes: dict[str, RecordMode] = {}  # per-connection overrides from the config file
        self._flush_task: asyncio.Task[None] | None = None
        self.miss_listeners: list[Callable[[str], None]] = []  # told every miss message (the pytest plugin)
        self.max_age_s = max_age_s
        self.on_expired = on_expired
        self._expired: dict[str, str] = {}  # cassettes found over max_age_s at their first opening this run
        self._used_at: dict[str, float] = {}  # when this run last wrote a cassette's use (monotonic)

    # -- opening -----------------------------------------------------------------------------

    def path_of(self, name: str) -> Path:
        return self.root / f"{name}.yaml"

    def journal_path(self, name: str) -> str:
        """The cassette file as the journal names it: absolute."""
        return str(self._journal_root / f"{name}.yaml")

    def exists(self, name: str) -> bool:
        cassette = self._cassettes.get(name)
        if cassette is not None and cassette.interactions:
            return True
        return self.path_of(name).exists()

    def mode_for(self, connection_name: str | None) -> RecordMode:
        return self.connection_modes.get(connection_name or "", self.default_mode)

    def name_of(self, kind: str, key: str) -> str:
        """The cassette's name (its path under the folder, without `.yaml`), inside the current scope's folder."""
        name = f"{kind}/{file_name(key)}"
        return f"{self.scope}/{name}" if self.scope else name

    def set_scope(self, scope: str | None) -> None:
        """Cassettes opened from now on live under `<scope>/` (a test's own folder), None for the folder itself.
        The server's handles start afresh, so a test replays its own recordings from their start."""
        if scope != self.scope:
            self.scope = scope
            self._server_handles.clear()

    def open(self, kind: str, key: str, mode: RecordMode | None = None, repeat_last: bool = False) -> CassetteHandle:
        """Open a cassette now: `once` looks at whether it exists at this moment."""
        name = self.name_of(kind, key)
        return self._handle(name, key, mode, self.exists(name), repeat_last)

    def _handle(self, name: str, key: str, mode: RecordMode | None, existed: bool, repeat_last: bool) -> CassetteHandle:
        handle = CassetteHandle(name, mode or self.default_mode, existed, key, repeat_last)
        if handle.mode is RecordMode.ALL and name not in self._reset_this_run:
            self._reset_this_run.add(name)
            self._pending_reset.add(name)
        return handle

    def server_handle(self, kind: str, key: str, purpose: str, mode: RecordMode | None = None) -> CassetteHandle:
        """A handle that lives as long as the server (testConnection, forward, connector search), with its own
        play-back positions per purpose. The cassette is the unit of `once`: whether it existed is decided at its
        first opening in this server run, whichever route opened it, so a cassette that route A started recording
        stays open for recording when route B calls too."""
        slot = (f"{kind}/{key}", purpose)
        handle = self._server_handles.get(slot)
        if handle is None or (mode is not None and handle.mode is not mode):
            name = self.name_of(kind, key)
            existed = self._existed_at_first_opening.setdefault(name, self.exists(name))
            handle = self._handle(name, key, mode, existed, repeat_last=purpose == "forward")
            self._server_handles[slot] = handle
        return handle

    async def opened(self, handle: CassetteHandle) -> tuple[Cassette, CassetteHandle]:
        """The handle's cassette, loaded, and the handle this call goes with: under `on_expired: rerecord` an
        expired cassette is recorded afresh (mode `all`), under `fail` its replays are refused. The use is noted
        for `proxy cassettes prune`."""
        cassette = await self.cassette(handle.name)
        await self._note_use(handle)
        why = self._expired.get(handle.name)
        if why is None:
            return cassette, handle
        if self.on_expired is OnExpired.RERECORD:
            return cassette, handle.for_call(RecordMode.ALL)
        if self.on_expired is OnExpired.FAIL:
            return cassette, replace(handle, expired=why)
        return cassette, handle

    async def _note_use(self, handle: CassetteHandle) -> None:
        now = time.monotonic()
        last = self._used_at.get(handle.name)
        if last is not None and now - last < USAGE_REFRESH_S:
            return
        self._used_at[handle.name] = now
        kind = handle.name.rsplit("/", 2)[-2].removesuffix("s")  # session, connection, connector
        used_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        await self.store.write(
            note_use, self.store, self.journal_path(handle.name), used_at, f"{kind} {handle.session_key}"
        )

    def _check_age(self, cassette: Cassette, newest: datetime | None) -> None:
        """At a cassette's first opening in this server run: is it older than `cassette_max_age`?"""
        if self.max_age_s is None or newest is None or not cassette.interactions:
            return
        age_s = (datetime.now(UTC) - newest).total_seconds()
        if age_s <= self.max_age_s:
            return
        recorded = newest.isoformat(timespec="seconds").replace("+00:00", "Z")
        why = (
            f"cassette {cassette.name} is {describe_age(age_s)} old (newest recording {recorded}), over "
            f"cassette_max_age {describe_age(self.max_age_s)}"
        )
        if self.on_expired is OnExpired.WARN:
            log.warning("%s: replaying it anyway (on_expired: warn)", why)
            return
        if self.on_expired is OnExpired.RERECORD:
            log.warning("%s: recording it afresh (on_expired: rerecord)", why)
            self._reset_this_run.add(cassette.name)
            self._pending_reset.add(cassette.name)
        self._expired[cassette.name] = (
            f"{why}; on_expired: fail refuses to replay it (re-record it with record mode all)"
            if self.on_expired is OnExpired.FAIL
            else why
        )

    async def cassette(self, name: str) -> Cassette:
        cassette = self._cassettes.get(name)
        if cassette is None:
            loading = self._loading.get(name)
            if loading is None:
                loading = self._loading[name] = asyncio.ensure_future(self._load(name))
            cassette = await asyncio.shield(loading)
        return cassette

    async def _load(self, name: str) -> Cassette:
        path = self.path_of(name)
        loop = asyncio.get_running_loop()
        cassette = Cassette(name, path, self.rules)
        if path.exists():
            # Parsing a large cassette is CPU work: off the event loop.
            try:
                interactions = await loop.run_in_executor(self._files, load_interactions, path, self.cache)
            except ValueError as exc:
                if name not in self._pending_reset:  # kept as this name's load: later calls fail alike
                    log.error("%s", exc)
                    raise CassetteRefused(str(exc)) from None
                log.warning("%s; it is recorded afresh (record mode all)", exc)
                interactions = []
            for interaction in interactions:
                cassette.add(interaction)
            cassette.existed = True
            if self.max_age_s is not None:
                recorded_at = [i.proxy.get("recorded_at") for i in interactions]
                self._check_age(cassette, await loop.run_in_executor(self._files, newest_recording, recorded_at, path))
        cassette.dirty = False
        self._cassettes[name] = cassette
        self._loading.pop(name, None)
        return cassette

    def unplayed(self, scope: str) -> list[tuple[str, int, int]]:
        """The cassettes under `<scope>/` this run loaded from disk, with the recordings it never played:
        (name, unplayed, interactions). Cassettes of the folder it never opened are for the caller to add."""
        prefix = f"{scope}/"
        found = []
        for name, cassette in list(self._cassettes.items()):  # a copy: the server's thread may add one
            if name.startswith(prefix) and cassette.existed:
                left = len(cassette.interactions) - len(cassette.played)
                if left > 0:
                    found.append((name, left, len(cassette.interactions)))
        return found

    def loaded(self, name: str) -> bool:
        return name in self._cassettes

    # -- recording ---------------------------------------------------------------------------

    async def record(self, handle: CassetteHandle, cassette: Cassette, interaction: Interaction) -> None:
        """Append, and commit to the journal before the caller answers anyone. Nothing is awaited before the
        append: a stream's end records from a task its client's hang-up may cancel at the first await."""
        # `all` starts a cassette afresh at its first new recording, not at its opening: a run stopped before it
        # recorded anything (Ctrl-C, the upstream down) leaves the old recordings as they were.
        reset = cassette.name in self._pending_reset
        if reset:
            self._pending_reset.discard(cassette.name)
            cassette.clear()
        interaction.proxy.setdefault("id", uuid.uuid4().hex)
        interaction.proxy.setdefault("session_key", handle.session_key)
        key = self.rules.key(interaction.recorded_request())
        cassette.played.add(cassette.add(interaction))  # what a run records it has used
        handle.skip_own_recording(cassette, key)
        text = cassette.serialize([interaction])
        seq = await self.store.write(self._journal_rows, cassette.name, reset, text, self.journal_path(cassette.name))
        cassette.journal_seq = max(cassette.journal_seq, seq)

    def _journal_rows(self, name: str, reset: bool, text: str, path: str) -> int:
        """The recorded interaction's journal row, after the `reset` row when it starts the cassette afresh."""
        if reset:
            self.journal.append(name, "reset", "", path)
        return self.journal.append(name, "interaction", text, path)

    def miss(self, cassette: Cassette, request: RecordedRequest, handle: CassetteHandle | None = None) -> CassetteMiss:
        """The cassette, the nearest recorded request and where they differ (also as data, for the
        inspector), and why this call could not record it, told to the miss listeners too. A scan, but only on a
        miss."""
        miss = self._miss(cassette, request)
        if handle is not None:
            miss = CassetteMiss(f"{miss}; {why_not_recorded(handle)}", miss.nearest)
        for listener in self.miss_listeners:
            listener(str(miss))
        return miss

    def _miss(self, cassette: Cassette, request: RecordedRequest) -> CassetteMiss:
        head = f"cassette {cassette.name} has no recording for {request.method} {request.uri}"
        if not cassette.interactions:
            where = "is empty" if cassette.existed or cassette.path.exists() else "does not exist"
            return CassetteMiss(f"{head} (the cassette {where}: {cassette.path})")
        nearest = max(cassette.interactions, key=lambda i: similarity(self.rules, i.recorded_request(), request))
        recorded = nearest.recorded_request()
        found = describe_difference(self.rules, recorded, request)
        difference = found.message if found else "identical, but every recording of it was already played"
        details = {
            "cassette": cassette.name,
            "method": recorded.method,
            "uri": recorded.uri,
            "body": recorded.body.decode("utf-8", errors="replace"),
            "difference": difference,
            "path": found.path if found else None,
        }
        message = f"{head}; nearest recorded: {recorded.method} {recorded.uri}, differing at {difference}"
        return CassetteMiss(message, details)

    # -- flushing ----------------------------------------------------------------------------

    async def flush(self, name: str | None = None) -> None:
        names = [name] if name else [n for n, c in self._cassettes.items() if c.dirty]
        for cassette_name in names:
            cassette = self._cassettes.get(cassette_name)
            if cassette is None or not cassette.dirty:
                continue
            cassette.dirty = False
            snapshot, journaled_upto = list(cassette.interactions), cassette.journal_seq
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._files, self._write, cassette, snapshot)
            except BaseException:  # cancelled too (a periodic flush at shutdown): the next flush writes it
                cassette.dirty = True
                raise
            await self.store.run(self.journal.forget, self.journal_path(cassette_name), journaled_upto)

    def _write(self, cassette: Cassette, snapshot: list[Interaction]) -> None:
        """Under the cassette's file lock, merged with what other processes wrote since we read it."""
        update_cassette(cassette.path, lambda on_disk: cassette.merged_with(on_disk, snapshot), self.cache)

    def start_periodic_flush(self, interval_s: float = DEFAULT_FLUSH_INTERVAL_S) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.flush()
                except Exception as exc:  # keep flushing later; the journal still holds everything
                    log.error("periodic cassette flush failed: %s", exc, exc_info=exc)

        self._flush_task = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._flush_task:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task  # settled first: a write it had queued is either done or marked dirty again
        await self.flush()
        self._files.shutdown(wait=True)

    # -- start-up ----------------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Fold this folder's journal rows into its cassette files (after a crash) and remove temporary files."""
        removed = remove_temp_files(self.root)
        recovered: dict[str, int] = {}
        elsewhere: Counter[str] = Counter()  # other cassettes folders: their unsaved interactions
        self.store.call(self.journal.claim_unplaced, self.journal_path)
        for journal_path, (name, rows) in self.store.call(self.journal.rows).items():
            path = Path(journal_path)
            if not path.is_relative_to(self._journal_root):
                folder = str(path.parents[len(Path(name).parts) - 1])  # the file is <folder>/<name>.yaml
                elsewhere[folder] += sum(kind == "interaction" for _, kind, _ in rows)
                continue
            update_cassette(path, partial(fold_journal, name=name, rows=rows, recovered=recovered), self.cache)
            self.store.call(self.journal.forget, journal_path, rows[-1][0])
        if removed or recovered:
            log.info("recovered %s journaled interactions; removed %d temporary files", recovered, removed)
        for folder, count in elsewhere.items():
            log.warning(
                "the journal keeps %d unsaved interactions of cassettes in %s%s; they are written there when a "
                "server starts with --cassettes %s",
                count,
                folder,
                "" if Path(folder).is_dir() else " (the folder is gone)",
                folder,
            )
        return recovered


def fold_journal(
    on_disk: list[Interaction], name: str, rows: list[tuple[int, str, str]], recovered: dict[str, int]
) -> list[Interaction]:
    """The cassette on disk with the journal's rows for it applied in order: a `reset` starts it afresh (this server
    was re-recording it), an interaction the file does not hold yet is appended and counted in `recovered`."""
    interactions = list(on_disk)
    for _seq, kind, text in rows:
        if kind == "reset":
            interactions = []
            continue
        known = identities(interactions)
        for item in parse_interactions(text, f"journal entry of {name}"):
            if identity(item) not in known:
                interactions.append(item)
                recovered[name] = recovered.get(name, 0) + 1
    return interactions
