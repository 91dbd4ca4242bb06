"""testConnection throughput through the proxy vs calling the test upstream directly with httpx.
Upstream and proxy each run in their own process; one load generator drives both in one run."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import httpx

from tests.bench.harness import drive, process, serve_command, upstream_process, write_config

CONCURRENCY = 16
REQUESTS = 3000


def run() -> list[str]:
    with upstream_process() as upstream, tempfile.TemporaryDirectory() as tmp:
        auth = {"auth_type": "BEARER", "auth_token": "bench-token"}
        template = '{"message": "{{ input.user_message }}"}'
        mapping = {"output": "$.reply", "retrieval_context": "$.docs"}
        fields = {**auth, "input_template": template, "output_mapping": mapping}
        config = write_config(Path(tmp) / "bench.yaml", "bench", f"{upstream}/chat", **fields)
        args, proxy_url = serve_command(config, Path(tmp), "off")  # live: the proxy's own overhead
        with process(args, f"{proxy_url}/healthz"):
            conn_id = httpx.get(f"{proxy_url}/endpointConnections").json()[0]["id"]
            payload = {"message": "hello"}

            async def direct(client: httpx.AsyncClient) -> httpx.Response:
                return await client.post(f"{upstream}/chat", json=payload, headers={"Authorization": "Bearer x"})

            async def through(client: httpx.AsyncClient) -> httpx.Response:
                return await client.post(
                    f"{proxy_url}/endpointConnections/testConnection",
                    json={"id": conn_id, "input": {"user_message": "hello"}},
                )

            asyncio.run(drive(direct, CONCURRENCY, 300))  # warm-up
            asyncio.run(drive(through, CONCURRENCY, 300))
            direct_load = asyncio.run(drive(direct, CONCURRENCY, REQUESTS))
            proxy_load = asyncio.run(drive(through, CONCURRENCY, REQUESTS))
    return [
        f"testConnection throughput ({CONCURRENCY} concurrent clients, {REQUESTS} requests each)",
        "  " + direct_load.line("upstream direct (httpx)"),
        "  " + proxy_load.line("through proxy testConnection"),
        f"  ratio proxy/direct: {proxy_load.per_second / direct_load.per_second:.2f}",
    ]
