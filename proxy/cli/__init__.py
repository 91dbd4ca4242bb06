"""The `proxy` command line: the main group with serve, run and check (main.py), the cassettes group, the shared
options, `proxy run` (runner.py) and the drift check. Imports from server and below."""
