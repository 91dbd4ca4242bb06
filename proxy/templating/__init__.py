"""The sandboxed Jinja2 environment connections render with (environment.py) and the budget every render runs
under (budget.py, sizes.py, calls.py). Imports only from config and errors."""
