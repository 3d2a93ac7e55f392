"""How deploy/edge-monitor@.service follows from deploy/edge-monitor.service: the same unit, one
per instance (docs/deploy.md, "Several instances"). tests/test_install.py checks that the shipped
template is exactly this, so that the two cannot drift apart; to change the template, change the
single unit and run ``python tests/unit_template.py``."""

from __future__ import annotations

from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"

HEADER = """\
# The tool-wear monitor as several instances on one box, each watching a partition of the machines
# (docs/deploy.md, "Several instances"): edge-monitor@<instance>.service reads
# /etc/edge-monitor/<instance>.yaml and keeps its state in /var/lib/edge-monitor/<instance>/.
# Generated from edge-monitor.service (tests/unit_template.py): every other line is the same.
# deploy/install.sh installs it beside edge-monitor.service; with --prefix DIR it rewrites the
# /opt, /etc and /var/lib paths below to lie under DIR.
# Site changes belong in a drop-in (`systemctl edit edge-monitor@`, or `edge-monitor@<instance>`
# for one instance), not in this file.
"""

SUBSTITUTIONS = (
    ("Description=Edge tool-wear monitor (", "Description=Edge tool-wear monitor, instance %i ("),
    ("/etc/edge-monitor/config.yaml", "/etc/edge-monitor/%i.yaml"),
    ("\nStateDirectory=edge-monitor\n", "\nStateDirectory=edge-monitor edge-monitor/%i\n"),
    ("# /var/lib/edge-monitor: the alarm state file (config.yaml: state_file) and the model bundle.",
     "# /var/lib/edge-monitor/%i: this instance's alarm state file (state_file in %i.yaml); the model\n"
     "# bundle in /var/lib/edge-monitor is shared."),
)


def template_unit(single: str) -> str:
    body = single[single.index("[Unit]"):]
    for old, new in SUBSTITUTIONS:
        if old not in body:
            raise ValueError(f"edge-monitor.service no longer has {old.strip()!r}: update tests/unit_template.py")
        body = body.replace(old, new)
    return HEADER + "\n" + body


if __name__ == "__main__":
    (DEPLOY / "edge-monitor@.service").write_text(template_unit((DEPLOY / "edge-monitor.service").read_text()))
    print(f"wrote {DEPLOY / 'edge-monitor@.service'}")
