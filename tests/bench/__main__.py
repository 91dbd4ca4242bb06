"""make bench: every benchmark, each printing ratios measured within one run.
`python -m tests.bench ttfb stream` runs only the named ones (bench_ttfb, bench_stream); a benchmark is imported
only when it runs, so one whose tool is missing (wrk) stops only a run that includes it."""

from __future__ import annotations

import importlib
import sys

BENCHES = (
    "engine",
    "test_connection",
    "replay",
    "run",
    "turn",
    "load",
    "stream",
    "mcp",
    "ttfb",
    "suite",
    "store",
)
unknown = [name for name in sys.argv[1:] if name not in BENCHES]
if unknown:
    sys.exit(f"no benchmark named {', '.join(unknown)}; there are: {', '.join(BENCHES)}")
for name in sys.argv[1:] or BENCHES:
    bench = importlib.import_module(f"tests.bench.bench_{name}")
    print("\n".join(bench.run()), flush=True)
    print(flush=True)
