"""SQLite behind one writer thread (store.py) and the in-memory table of a small entity kind (entity_tables.py).
Imports only from security, config and errors."""
