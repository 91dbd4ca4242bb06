"""Every default and cap a user can meet, in one place (the sizes of internal memo tables stay beside their code),
and the server-wide settings value object."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from proxy.config.expiry import OnExpired
from proxy.config.record_mode import RecordMode

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_DATA_DIR = ".proxy"
DEFAULT_CASSETTES_DIR = "cassettes"
DEFAULT_REPLAY_SPEED = 1.0  # recorded delays are divided by it
USAGE_REFRESH_S = 3600.0  # a cassette's last-used time is written at most this often per server run

# Endpoint connection defaults and caps (Galtea's documented values).
DEFAULT_TIMEOUT_S = 15.0
MAX_TIMEOUT_S = 120.0
DEFAULT_RETRY_MAX_ATTEMPTS = 3
MAX_RETRY_MAX_ATTEMPTS = 10
DEFAULT_RETRY_INITIAL_DELAY_MS = 1000
DEFAULT_RETRY_MAX_DELAY_MS = 30000
MAX_RETRY_DELAY_MS = 60000
DEFAULT_RETRYABLE_STATUS_CODES = (429, 500, 502, 503, 504)
MAX_CONVERSATION_END_RULES = 20
RATE_LIMIT_WINDOW_S = 60.0
MAX_FAULT_RULES = 50
MAX_FAULT_DELAY_MS = 120_000
# `response_mode: sse`: where each event's JSON data holds its piece of the reply's text (OpenAI's shape).
DEFAULT_STREAM_TEXT_PATH = "$.choices[0].delta.content"

# What one client may make the server hold before any route (and so before authentication) runs. uvicorn's
# httptools parser keeps a request's URL and headers whole, without bound, and waits for them forever.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # a request's line and headers together (431 beyond); browsers send ~2 KB
DEFAULT_MAX_HEADERS = 100  # header lines in one request (431 beyond)
DEFAULT_HEADER_TIMEOUT_S = 10.0  # from a connection's opening, or a request's first byte, to its headers' end (408)
# A request body must then keep coming at least this fast (after a grace of header_timeout), or 408: a body
# dribbled a byte a second would otherwise hold its connection slot for as long as it likes.
MIN_BODY_BYTES_PER_S = 1024
DEFAULT_MAX_CONNECTIONS = 1000  # open at once; more are answered 503 and closed (under the usual 1024 open files)
DEFAULT_SEND_TIMEOUT_S = 60.0  # a client that takes none of its answer for this long is disconnected

# `proxy run`: sessions run at once unless --concurrency says otherwise.
DEFAULT_CONCURRENCY = 8
# The pytest plugin's in-process server: how long its start may take, and its stop (the last flush of a long
# recording session on a loaded machine).
SERVER_START_TIMEOUT_S = 10.0
SERVER_STOP_TIMEOUT_S = 300.0

# Upstream connections (the live client).
DEFAULT_MAX_CONNECTIONS_PER_ORIGIN = 100  # httpx's own default cap; further requests wait for a free one
DEFAULT_KEEPALIVE_TIMEOUT_S = 30.0  # an idle connection is closed after this, never reused forever

# The SQLite writer and the cassettes: what is written when.
MAX_QUEUED = 256  # writes waiting for the next commit before `room` holds their callers back
ROW_BATCH_DELAY_S = 0.01  # the longest an `enqueue`d write waits for the next commit
DEFAULT_FLUSH_INTERVAL_S = 5.0  # a server writes what it recorded into the cassette files this often
# How long a writer waits for another process to finish writing the same cassette (a write takes milliseconds).
CASSETTE_LOCK_TIMEOUT_S = 60.0
DEFAULT_SESSION_CACHE_SIZE = 1024  # recent sessions held in memory (the rest are read from the database)
MAX_CLIENT_SECRETS = 32  # distinct client credentials kept masked per forward upstream (the newest)
COHERE_MAX_PAGE = 100  # most connectors one `GET /v1/connectors` page lists

# Browsers may cache a CORS preflight answer this long.
CORS_MAX_AGE_S = 600

# `proxy cassettes drift` on a stream: a live model answers in more or fewer pieces each time, so a live event
# count is drift only when it is off the recorded one by more than this share of it and by more than so many
# events (a 3-piece answer may come in 6; one of 10 pieces in 40 is another answer).
DRIFT_EVENT_COUNT_RATIO = 0.5
DRIFT_EVENT_COUNT_SLACK = 4

# Bodies.
MAX_API_BODY_BYTES = 10 * 1024 * 1024
MAX_UPSTREAM_BODY_BYTES = 10 * 1024 * 1024
ERROR_BODY_PREVIEW_CHARS = 1000
# An upstream's status-line reason phrase is untrusted text shown in errors and stored in cassettes: only its
# printable characters are kept, and at most this many (aiohttp alone lets one run to 8 KB).
MAX_REASON_PHRASE_CHARS = 200

# Cassette files, read before anything is built from them: a larger file or one with more interactions is refused
# (YAML costs ~20 KB of memory an interaction while it is parsed). The 100,000-interaction bench cassette is ~40 MB.
CASSETTE_MAX_BYTES = 256 * 1024 * 1024
CASSETTE_MAX_INTERACTIONS = 1_000_000

# `proxy cassettes import`: a cassette file from outside larger than this is refused before it is read. A test's
# recording is kilobytes; parsing costs ~20 KB of memory an interaction (YAML) or ~10x the file (JSON).
DEFAULT_IMPORT_MAX_FILE_BYTES = 64 * 1024 * 1024

# JSON bounds. A request body over either answers 400; an upstream reply over either fails its call.
# The digit limit is Python's own for converting integers (sys.int_max_str_digits).
JSON_MAX_DEPTH = 500
JSON_MAX_NUMBER_DIGITS = 4300
# A reply larger than this is parsed and mapped in a worker thread, so the event loop keeps serving.
OFF_LOOP_REPLY_BYTES = 256 * 1024

# JSONPath bounds. Every JSONPath run over a reply (output mapping, end rules, the SSE text path) counts a
# step per value it visits or matches; one reading of a reply may take this many steps plus so many per
# character of it: enough to walk every value of any reply a few times (`$..a`), not for a path whose cost
# multiplies with the depth (`$..*..*..*`, the cube of it).
JSONPATH_BASE_STEPS = 100_000
JSONPATH_STEPS_PER_CHAR = 2
# A reading of a small reply runs on the event loop for at most this many steps (10-30 ms), then starts again
# in a worker thread, so no JSONPath holds up other sessions or /healthz.
JSONPATH_LOOP_STEPS = 20_000

# Template bounds. A template source over the size cap is refused (compiling costs ~3 ms a KB, on the
# event loop); a render that passes its time, size or call-depth budget fails the call. Numbers a
# template computes are held to the JSON digit limit.
TEMPLATE_MAX_SOURCE_CHARS = 100_000
# Warnings about undefined template variables (testConnection, `proxy check`, the preview): a loop over a
# misspelt name would otherwise repeat one warning per item; the keys listed beside one, for a large input.
MAX_UNDEFINED_WARNINGS = 20
MAX_LISTED_KEYS = 30
TEMPLATE_RENDER_TIME_S = 0.5
TEMPLATE_MAX_CHARS = 10 * 1024 * 1024  # the rendered text, and any value built on the way
# Every value one render builds (repeated and joined strings, a filter's copy of its text), added up as it is
# built: the clock is read only between steps, so this bounds the work between two readings too.
TEMPLATE_MAX_BUILT_CHARS = 10 * 1024 * 1024
TEMPLATE_MAX_ITEMS = 100_000  # rows a `batch`/`slice` filter may make up (Jinja's own cap for range())
TEMPLATE_MAX_CALL_DEPTH = 64  # nested macro and function calls

# What testConnection sends when the caller gives no input.
DEFAULT_TEST_INPUT = {"user_message": "Hello! This is a test message."}

# The server keeps every session and turn in memory, so the heap only grows; with CPython's default
# thresholds (700, 10, 10) the collector re-walks it so often that it cost a quarter of replay time.
GC_THRESHOLDS = (10000, 10, 10)

# The flow log (every upstream call, for the inspector): the newest this many are kept in the data dir.
DEFAULT_FLOW_LOG_SIZE = 10_000
FLOWS_PAGE_SIZE = 200  # flows the list page and a HAR export show at most
FLOW_EVENTS_HEARTBEAT_S = 15.0  # an idle live-update stream sends a comment this often
FLOW_EVENTS_MAX_S = 300.0  # a live-update stream ends after this long (the browser reconnects)
FLOW_EVENTS_QUEUE = 100  # flows a slow live-update client may fall behind by before its stream ends
DEFAULT_MAX_FLOW_VIEWERS = 32  # live-update streams at once; a newer one ends the oldest (each costs every flow)
FLOW_BATCH_ROWS = 256  # flows queued that are written at once, without waiting for the delay
FLOW_BATCH_DELAY_S = 0.05  # the longest a flow waits in the queue before it is written
# Of a relayed stream, the body its flow keeps (as relayed, masked): a long stream is relayed whole all the same,
# but its flow is truncated here, so one stream cannot make the log hold as much as the 10 MB body cap.
DEFAULT_FLOW_BODY_MAX_BYTES = 1024 * 1024

# MCP over the forward route. A session id is an opaque token the server hands out; the spec bounds its
# characters, not its length: 256 holds a UUID, a JWT-sized id would be refused (400) rather than stored.
MAX_MCP_SESSION_ID_CHARS = 256
# Sessions a replay has handed out and still serves (each holds its play-back positions and maybe an open GET
# stream); the oldest is forgotten beyond this, its GET stream ended.
MAX_MCP_REPLAY_SESSIONS = 1024

# PROXY_SECRET_KEY as a passphrase is stretched with scrypt: 32 MB and ~65 ms of a free core (0.2 s with every
# core busy), once per start-up or command, and as much for every guess at a stolen database (one SHA-256 cost
# nanoseconds). They make the key: changed, no stored secret opens.
PASSPHRASE_SCRYPT_N = 2**15
PASSPHRASE_SCRYPT_R = 8
PASSPHRASE_SCRYPT_P = 1
PASSPHRASE_SALT_BYTES = 16  # random per data dir, kept in its secret.salt

MASK = "••••••••"
# Secrets shorter than this are refused: masking them in free text would shred every message.
MIN_SECRET_LEN = 8
# A secret inside a JSON document that is itself a JSON string value (its escapes escaped again) is masked down
# to this many documents deep. Each level doubles a secret's backslashes (the longest echo a stream holds back
# grows with it) and costs one more pass over a reply holding a doubled backslash.
MASK_NESTED_JSON_DEPTH = 3

LATEST_SDK_VERSION = "5.12.0"
MINIMUM_SDK_VERSION = "5.0.0"


class ReplayLatency(StrEnum):
    NONE = "none"  # a replayed answer comes at once
    RECORDED = "recorded"  # each replayed answer sleeps its recorded latency


@dataclass(frozen=True)
class Settings:
    """A server's settings, typed: each value was checked where it was read (the config file in proxy/config/file.py,
    the flags by click) and merged in proxy/config/sources.py; whatever reads a setting takes it as it is."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    cassettes_dir: Path = Path(DEFAULT_CASSETTES_DIR)
    record_mode: RecordMode = RecordMode.ONCE
    allow_http: bool = False
    traceparent: bool = True
    api_key: str | None = None
    replay_latency: ReplayLatency = ReplayLatency.NONE
    allowed_hosts: tuple[str, ...] = ()  # Host names answered beside the bind address, localhost and loopback
    cors_origins: tuple[str, ...] = ()  # web origins allowed to call the API (CORS)
    replay_speed: float = DEFAULT_REPLAY_SPEED
    fault_seed: int | None = None  # seeds the generators of fault rules with a `probability` (a rule's `seed` wins)
    cassette_max_age: timedelta | None = None  # older cassettes are handled as on_expired says
    on_expired: OnExpired = OnExpired.WARN
    flow_log_size: int = DEFAULT_FLOW_LOG_SIZE  # the newest flows kept
    max_flow_viewers: int = DEFAULT_MAX_FLOW_VIEWERS  # live `/flows/events` streams; a newer one ends the oldest
    flow_body_max_bytes: int = DEFAULT_FLOW_BODY_MAX_BYTES  # of a relayed stream, the body its flow keeps
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES  # a request's line and headers, before any route runs
    max_headers: int = DEFAULT_MAX_HEADERS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S  # seconds to a request's headers' end
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    send_timeout: float = DEFAULT_SEND_TIMEOUT_S  # seconds a client may take none of its answer

    def __post_init__(self) -> None:
        # An enum setting given as its value's text (`record_mode="none"`) is held as the enum all the same.
        for name, kind in (("record_mode", RecordMode), ("replay_latency", ReplayLatency), ("on_expired", OnExpired)):
            object.__setattr__(self, name, kind(getattr(self, name)))
