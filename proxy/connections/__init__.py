"""Endpoint connections and what they are made of: the spec as Galtea documents it, the compiled form, the registry,
headers and auth, output mapping, retry, fault rules, targets; and the catalog (versions, products).
Imports from storage, templating, security, config and errors; never from the engine or above."""
