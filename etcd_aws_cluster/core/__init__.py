"""The core: pure decisions and renderings over frozen facts (who is who, the boot plan, recovery, reconcile,
status, proxy, the env file's text, the JSON documents of the backups). No I/O, no clock, no network library:
tests drive it with tables of facts."""
