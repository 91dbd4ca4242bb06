"""The HTTP routes (Galtea- and Cohere-compatible, forward, flows, faults, inspector), the request guard and
middleware, and the bodies they take and answer (schemas*.py). Imports from sessions, flows, connectors, engine
and below, and the Runtime it works through (proxy.server.runtime)."""
