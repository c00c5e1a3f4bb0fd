"""The adapters: the outside world in and out as the core's frozen values. IMDS, the AWS APIs, S3, etcd's client
API and its own tools, the host's file system (data dir, WAL, lock, scratch files, atomic writes), the journal
and sd_notify. Each is bounded by a timeout or the run's deadline and validates what it reads."""
