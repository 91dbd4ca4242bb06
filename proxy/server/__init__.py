"""The running server: the Starlette app, the Runtime that wires store, registries, engine and transport stack, the
listening socket and the limits before any route; server/api/ holds the routes and their bodies.
Imports from every package below it (sessions, flows, connectors, cassettes, engine, …); never from cli."""
