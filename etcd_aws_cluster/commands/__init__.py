"""One module per command, each with `run(settings, args) -> int`; cli.py imports only the chosen one."""
