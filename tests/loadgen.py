"""A load generator for the tests and the overload benchmark: one process replaying an archive as
N machines whose ids start with a prefix (so that several generators feed one monitor at once), as
fast as the broker takes it, with timestamps in the past (a data acquisition catching up). Prints
the number of messages published.

    python tests/loadgen.py HOST:PORT ARCHIVE ROOT PREFIX MACHINES [CHUNK]
"""

from __future__ import annotations

import sys

from edge_monitor.archive.mill import read_archive
from edge_monitor.archive.publisher import Publisher
from edge_monitor.archive.replay import plan_machines, replay
from edge_monitor.core.channels import SAMPLE_RATE_HZ
from edge_monitor.service.mqtt import (
    BrokerSettings,
    connect,
    disconnect,
    make_client,
    parse_address,
)


def main(address: str, archive: str, root: str, prefix: str, machines: str, chunk: str = "64") -> None:
    host, port = parse_address(address)
    plan = plan_machines(read_archive(archive), int(machines))
    plan = {f"{prefix}{machine}": jobs for machine, jobs in plan.items()}
    client = make_client(BrokerSettings(host=host, port=port, client_id=f"loadgen-{prefix}"), clean_start=True)
    connect(client)
    try:
        # As a data acquisition catching up after an outage: its data was taken before it is sent.
        taken_for = max(sum(job.cut.n_samples for job in jobs) for jobs in plan.values()) / SAMPLE_RATE_HZ
        stats = replay(Publisher(client), root, plan, speed=0.0, chunk=int(chunk), ts_offset=-taken_for)
    finally:
        disconnect(client)
    print(stats.messages)


if __name__ == "__main__":
    main(*sys.argv[1:])
