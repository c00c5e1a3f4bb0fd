from __future__ import annotations

import sys

from etcd_aws_cluster.cli import main

sys.exit(main())
