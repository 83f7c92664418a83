#!/usr/bin/env python3
"""Write deploy/kubernetes/monitoring/prometheusrule.yaml from deploy/prometheus/alerts.yml, the
one source of truth for the alert rules (comments kept, `groups` indented under `spec`).
Usage: scripts/gen-prometheusrule.py [--check]   (--check: exit 1 when the file is stale)"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "deploy" / "prometheus" / "alerts.yml"
TARGET = ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by scripts/gen-prometheusrule.py: edit that file
# (where promtool checks and unit-tests the rules), then run the script. The test suite fails
# when the two differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: iotmeter
  namespace: iotmeter
  labels:
    app.kubernetes.io/name: iotmeter
    app.kubernetes.io/component: monitoring
    app.kubernetes.io/part-of: iotmeter
spec:
"""


def render() -> str:
    text = SOURCE.read_text(encoding="utf-8")
    start = text.index("\ngroups:\n") + 1
    body = text[start:]
    return HEADER + "".join(
        ("  " + line if line.strip() else line) for line in body.splitlines(keepends=True))


def main(argv: list[str]) -> int:
    wanted = render()
    if "--check" in argv:
        if TARGET.read_text(encoding="utf-8") != wanted:
            print(f"{TARGET.relative_to(ROOT)} is stale: run scripts/gen-prometheusrule.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
