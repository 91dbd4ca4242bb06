"""Keeping secrets secret: the redactor and the forms an echo of a secret takes, masking of streams, heads and URL
query strings, secrets at rest (vault.py), the origins a credential belongs to, the data dir, bounded JSON.
Imports only from config and errors."""
