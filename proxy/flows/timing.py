"""Whose time a flow shows, in words. A replayed attempt reports the latency its recording measured (what a
replay hands on as the call's latency), while a relayed stream is timed as it passes: replayed, its duration is
the replay's own. The flow page and the HAR export label each so neither reads as the other."""

from __future__ import annotations

from typing import Any


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


def _replayed(attempt: dict[str, Any]) -> bool:
    """Played back from the cassette (a flow logged before `replayed` was kept: by its outcome)."""
    return bool(attempt.get("replayed", attempt.get("cassette") == "hit"))


def pace_words(pace: float | None) -> str:
    """How a replay was paced: at once, or at the recorded timing divided by `pace`."""
    if not pace:
        return "at once"
    return "at the recorded pace" if pace == 1 else f"at {pace:g}× the recorded pace"


def attempt_latency(attempt: dict[str, Any], relayed: bool = False) -> str:
    """An attempt's latency; a replayed one's is the recording's, a relayed stream's (timed live) ends at its head."""
    text = _ms(float(attempt["latencyMs"]))
    if _replayed(attempt):
        return f"recorded: {text}"
    return f"{text} to its head" if relayed else text


def recorded_latency_ms(flow: dict[str, Any]) -> float | None:
    """The latency the recording measured, when the flow's answer was replayed."""
    attempts = flow["data"]["exchange"].get("attempts") or []
    return float(attempts[-1]["latencyMs"]) if attempts and _replayed(attempts[-1]) else None


def flow_latency(flow: dict[str, Any]) -> str | None:
    """The flow's latency, saying whose it is: a replayed stream's own duration (and how it was paced, and what
    the recording took), a replayed answer's recorded latency, or a live call's."""
    latency = flow.get("latency_ms")
    if latency is None:
        return None
    recorded = recorded_latency_ms(flow)
    if recorded is None:
        return _ms(latency)
    exchange = flow["data"]["exchange"]
    pace = pace_words(exchange["attempts"][-1].get("replayPace"))
    if "durationMs" in (exchange.get("stream") or {}):  # a relayed stream: timed as it was replayed
        return f"replayed in {_ms(latency)}, {pace} (recorded: {_ms(recorded)})"
    return f"recorded: {_ms(latency)} (replayed {pace})"
