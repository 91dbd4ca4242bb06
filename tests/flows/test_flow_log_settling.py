"""The flow log settles (before a read, on shutdown) without waiting on the loop it holds."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from proxy.flows.log import FlowLog
from proxy.security.redaction import Redactor
from proxy.security.vault import Vault, load_fernet
from proxy.storage.store import Store


def test_settling_while_a_finished_batch_awaits_its_callback_returns(tmp_path: Path) -> None:
    """A batch that finished in the same loop turn as `settled` began: its done-callback has not cleared it yet.
    `proxy run` hung at shutdown here, spinning a core, because awaiting a finished task never yields."""
    store = Store(tmp_path, Vault(load_fernet(tmp_path)))
    flows = FlowLog(store, Redactor())
    settled = threading.Event()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        finished.set_result(None)
        flows._flushing = finished  # type: ignore[assignment]  # done, its `_flushed` still to run
        loop.call_soon(setattr, flows, "_flushing", None)  # what `_flushed` does, on the next loop turn
        await flows.settled()
        settled.set()

    # In a thread of its own: a spinning `settled` never yields, so nothing in its loop could time it out.
    threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True).start()
    try:
        assert settled.wait(timeout=5), "settled() spun on a finished batch instead of letting its callback run"
    finally:
        store.close()
