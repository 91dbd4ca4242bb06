"""The pytest plugin: hooks (the entry point), options, the in-process server. Imports nothing of the server until
a test asks for `proxy_server`; may import from cli and below."""
