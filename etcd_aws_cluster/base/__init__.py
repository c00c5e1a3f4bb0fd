"""The base layer: what every other layer may use. The error tree and its exit codes, the checks for untrusted
strings, and the run's one deadline with bounded retries. Imports nothing of the package above it."""
