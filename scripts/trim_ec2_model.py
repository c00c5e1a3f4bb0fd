"""Write the part of botocore's EC2 service model the agent uses (DescribeInstances) into the package.

botocore loads the whole EC2 model (about 550 KB compressed, 20 MB in memory) to create an EC2 client; the agent
calls one operation. `etcd_aws_cluster/adapters/aws.py` puts the trimmed copy first on botocore's data path, so the
client is created from it; everything else (endpoint rules, paginators) still comes from the installed botocore.
Run `python scripts/trim_ec2_model.py` after upgrading botocore; `--check` exits 1 when the copy is out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import botocore.loaders

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ("DescribeInstances",)
API_VERSION = "2016-11-15"
TARGET = ROOT / "etcd_aws_cluster" / "data" / "ec2" / API_VERSION / "service-2.json"


def referenced(shapes: dict[str, Any], name: str, seen: set[str]) -> None:
    if name in seen:
        return
    seen.add(name)
    shape = shapes[name]
    for member in shape.get("members", {}).values():
        referenced(shapes, member["shape"], seen)
    for key in ("member", "key", "value"):
        if key in shape:
            referenced(shapes, shape[key]["shape"], seen)


def trimmed() -> dict[str, Any]:
    model = botocore.loaders.Loader().load_service_model("ec2", "service-2", API_VERSION)
    keep: set[str] = set()
    operations = {}
    for name in OPERATIONS:
        operation = dict(model["operations"][name])
        operation.pop("documentation", None)
        operations[name] = operation
        for part in ("input", "output"):
            if part in operation:
                referenced(model["shapes"], operation[part]["shape"], keep)

    def strip(shape: dict[str, Any]) -> dict[str, Any]:
        shape = {k: v for k, v in shape.items() if k != "documentation"}
        if "members" in shape:
            shape["members"] = {
                m: {k: v for k, v in spec.items() if k != "documentation"} for m, spec in shape["members"].items()
            }
        return shape

    return {
        "version": model.get("version", "2.0"),
        "metadata": model["metadata"],
        "operations": operations,
        "shapes": {name: strip(model["shapes"][name]) for name in sorted(keep)},
    }


def main() -> int:
    text = json.dumps(trimmed(), sort_keys=True, separators=(",", ":")) + "\n"
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python scripts/trim_ec2_model.py", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
