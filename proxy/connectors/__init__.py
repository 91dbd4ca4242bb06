"""Cohere-style connectors: the registry, a connector as held and sealed at rest, its input, its searches through
the engine. Imports from cassettes, engine and below."""
