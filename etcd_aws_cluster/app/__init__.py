"""The application layer: one run of a command. Settings, the Context (one deadline, the clients, the cluster
view), the boot run, backups and the survivors' hand-offs: it calls the adapters for facts, the core for
decisions, and the adapters again to act."""
