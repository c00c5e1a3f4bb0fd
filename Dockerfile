# etcd-aws-cluster in a container, for hosts that run containers rather than Python packages (Flatcar and
# other CoreOS-style systems). See docs/container.md.
#
#   docker build -t etcd-aws-cluster .
#   docker run --rm --network host -v /etc/sysconfig:/out -v /var/lib/etcd:/var/lib/etcd \
#       etcd-aws-cluster --output /out/etcd-cluster
FROM python:3.12-slim

# The runtime dependencies of pyproject.toml, without systemd-python: it needs a compiler and libsystemd headers
# to build, and in a container the agent logs to stderr anyway (docker logs / the journal of the calling unit).
RUN pip install --no-cache-dir --disable-pip-version-check "boto3>=1.26" "requests>=2.28" "pydantic-settings>=2.0"

COPY pyproject.toml README.md /src/
COPY etcd_aws_cluster /src/etcd_aws_cluster
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps /src && rm -rf /src

# Inside the container there is no /etc/etcd-aws-cluster/config.toml unless you mount one; settings usually come
# as -e ETCD_AWS_CLUSTER_<NAME>=... The default data_dir candidates (/var/lib/etcd/default, /var/lib/etcd) and
# the lock in /run work when those paths are mounted from the host.
ENTRYPOINT ["etcd-aws-cluster"]
