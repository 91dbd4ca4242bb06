"""make bench: every benchmark, each printing ratios measured within one run."""

from __future__ import annotations

from tests.bench import (
    bench_engine,
    bench_load,
    bench_mcp,
    bench_replay,
    bench_run,
    bench_store,
    bench_stream,
    bench_suite,
    bench_test_connection,
    bench_turn,
)

BENCHES = (
    bench_engine,
    bench_test_connection,
    bench_replay,
    bench_run,
    bench_turn,
    bench_load,
    bench_stream,
    bench_mcp,
    bench_suite,
)
for bench in (*BENCHES, bench_store):
    print("\n".join(bench.run()), flush=True)
    print(flush=True)
