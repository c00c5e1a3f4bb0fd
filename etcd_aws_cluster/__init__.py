"""Boot agent that bootstraps or joins an etcd cluster on an AWS Auto Scaling Group."""

from __future__ import annotations

__version__ = "0.1.0"
