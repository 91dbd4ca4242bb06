"""One upstream call (call.py: render → auth → retry → transport → mapping), its request, reply and results, streams
above the transport, forward-only upstreams; engine/transports/ is the httpx transport stack under it.
Imports from connections and below; never cassette code (the record/replay transport is injected)."""
