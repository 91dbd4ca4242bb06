"""proxy: a local mock-and-record server for Galtea endpoint connections and Cohere connectors."""

__version__ = "0.1.0"
