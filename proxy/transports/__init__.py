"""The transport seam: every upstream call goes through one httpx transport that is live, recording
or replaying per cassette. Nothing above it branches on the mode."""


class BodyTooLarge(Exception):
    """An upstream body over the cap: the call fails cleanly, and nothing is recorded."""
