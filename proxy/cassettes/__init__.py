"""Cassettes: the vcrpy format, locked atomic files, the parse cache, matching, the library of one server with its
journal, the record/replay transport, the folder as a user sees it (inventory, usage, orphans) and `import`.
Imports from the engine's transport vocabulary (proxy.engine.transports) and below."""
