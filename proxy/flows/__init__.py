"""The flow log of every upstream call, its export (curl, HAR) and the text that explains one call.
Imports from the engine and below."""
