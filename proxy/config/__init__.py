"""Configuration: the typed `Settings` and every default and cap (settings.py), the YAML config file (file.py),
record modes, cassette age, unknown-key checks. Imports nothing of the project but `proxy.errors`."""
