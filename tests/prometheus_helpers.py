"""Helpers shared by the Prometheus tests: the repository's Prometheus and Grafana files, a loud
skip for missing binaries, and the rewriting of PromQL expressions (Grafana variables
substituted, comparisons turned into 0/1 with ``bool``)."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from tests.service_process import REPO

ALERTS = REPO / "docker" / "prometheus" / "alerts.yml"


def boolify(expr: str) -> str:
    """``expr`` with every comparison turned into its ``bool`` form (0/1 for every input series),
    so an alert expression that is not firing still shows whether its inputs exist."""
    out, i, depth, quote = [], 0, 0, ""
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(c)
            if c == "\\":
                out.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = ""
            i += 1
            continue
        if c in "\"'`":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0:
            m = re.match(r"(==|!=|>=|<=|>|<)", expr[i:])
            if m:
                op = m.group(1)
                out.append(op)
                i += len(op)
                if not re.match(r"\s*bool\b", expr[i:]):
                    out.append(" bool")
                continue
        out.append(c)
        i += 1
    return "".join(out)


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def loud_skip(reason: str) -> None:
    print(f"\n*** SKIPPED: {reason}\n", file=sys.stderr)
    pytest.skip(reason)
