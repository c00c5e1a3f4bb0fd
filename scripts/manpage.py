"""Generate docs/etcd-aws-cluster.8 from the argument parser, the settings model and the exit codes.

`python scripts/manpage.py` rewrites the page; `--check` exits 1 when the committed page is out of date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etcd_aws_cluster import __version__  # noqa: E402
from etcd_aws_cluster.app.settings import ENV_PREFIX, Settings  # noqa: E402
from etcd_aws_cluster.base.errors import EXIT_CODES  # noqa: E402
from etcd_aws_cluster.cli import COMMANDS, DESCRIPTION, build_parser  # noqa: E402

PAGE = ROOT / "docs" / "etcd-aws-cluster.8"


def esc(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def options(parser: argparse.ArgumentParser) -> list[str]:
    return options_of([a for a in parser._actions if a.option_strings], parser.prog)


def commands(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, summary in COMMANDS.items():
        sub = subparsers.choices[name]
        # A command's own options, and shared ones it gives its own meaning (reconcile's --dry-run).
        top_help = {a.dest: a.help for a in parser._actions}
        own = [a for a in sub._actions if a.option_strings and top_help.get(a.dest, a) != a.help]
        out += [".TP", f"\\fB{esc(name)}\\fR", esc(summary)]
        if own:
            out += [".RS"]
            for action in own:
                out += options_of([action], parser.prog)
            out += [".RE"]
    return out


def options_of(actions: list[argparse.Action], prog: str) -> list[str]:
    out: list[str] = []
    for action in actions:
        flags = ", ".join(f"\\fB{esc(s)}\\fR" for s in action.option_strings)
        if action.metavar:
            flags += f" \\fI{esc(str(action.metavar))}\\fR"
        help_text = (action.help or "") % {"default": action.default, "prog": prog}
        out += [".TP", flags, esc(help_text)]
    return out


def render() -> str:
    parser = build_parser()
    lines = [
        f'.TH ETCD\\-AWS\\-CLUSTER 8 "" "etcd-aws-cluster {__version__}" "System Administration"',
        ".SH NAME",
        "etcd\\-aws\\-cluster \\- bootstrap or join an etcd cluster on an AWS Auto Scaling group",
        ".SH SYNOPSIS",
        "\\fBetcd\\-aws\\-cluster\\fR [\\fIOPTIONS\\fR] [\\fICOMMAND\\fR [\\fICOMMAND OPTIONS\\fR]]",
        ".SH DESCRIPTION",
        ".nf",
        esc(DESCRIPTION),
        ".fi",
        ".SH OPTIONS",
        *options(parser),
        ".SH COMMANDS",
        *commands(parser),
        ".SH SETTINGS",
        "Highest priority first: command\\-line options, environment variables",
        f"\\fB{esc(ENV_PREFIX)}\\fR\\fINAME\\fR, drop\\-ins",
        "\\fI/etc/etcd\\-aws\\-cluster/config.d/*.toml\\fR (sorted, later wins), the config file",
        "\\fI/etc/etcd\\-aws\\-cluster/config.toml\\fR, then defaults. TOML keys are the setting names.",
    ]
    for name, field in Settings.model_fields.items():
        default = "(empty)" if field.default is None else str(field.default)
        if isinstance(field.default, bool):
            default = default.lower()
        lines += [
            ".TP",
            f"\\fB{esc(name)}\\fR, \\fB{esc(ENV_PREFIX + name.upper())}\\fR (default: {esc(default)})",
            esc(field.description or ""),
        ]
    lines += [".SH EXIT STATUS"]
    for code, meaning in EXIT_CODES:
        lines += [".TP", f"\\fB{code}\\fR", esc(meaning)]
    lines += [
        ".SH FILES",
        ".TP",
        "\\fI/etc/sysconfig/etcd\\-cluster\\fR",
        "the env file etcd starts from (written atomically, mode 0644)",
        ".TP",
        "\\fI/etc/etcd\\-aws\\-cluster/config.toml\\fR, \\fI/etc/etcd\\-aws\\-cluster/config.d/*.toml\\fR",
        "settings",
        ".TP",
        "\\fI/etc/etcd\\-aws\\-cluster/disabled\\fR",
        "when present, etcd\\-aws\\-cluster.service does not run",
        ".SH SEE ALSO",
        "\\fBetcd\\fR(1), \\fBsystemd.exec\\fR(5), \\fBjournalctl\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python scripts/manpage.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
