"""A do-nothing subscriber: the broker's fan-in to one paho client, without the daemon's work.

    python -m edge_monitor.bench.sink --broker HOST:PORT --root R --expect N [--idle-timeout S]

MQTT 5, QoS 1 subscriptions to the input topics (``R/+/cut/#``, ``R/+/signal/#``, ``R/+/frame/#``), as the daemon
subscribes; it only counts. It prints ``subscribed`` once the broker granted the subscriptions,
then, after N messages or S seconds without one, a JSON line: how many it received and the
``time.monotonic()`` of the first and the last.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from ..service.mqtt import (
    BrokerSettings,
    connect,
    disconnect,
    make_client,
    parse_address,
)


class Counter:
    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.received = 0
        self.first: float | None = None
        self.last: float | None = None
        self.done = threading.Event()

    def on_message(self, client, userdata, message) -> None:
        self.last = time.monotonic()
        if self.first is None:
            self.first = self.last
        self.received += 1
        if self.received >= self.expect:
            self.done.set()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_monitor.bench.sink", description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", required=True, metavar="HOST:PORT")
    p.add_argument("--root", required=True)
    p.add_argument("--expect", type=int, required=True, help="stop after this many messages")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="or after this many seconds without one")
    args = p.parse_args(argv)
    host, port = parse_address(args.broker)
    counter = Counter(args.expect)
    subscribed = threading.Event()
    filters = [(f"{args.root}/+/cut/#", 1), (f"{args.root}/+/signal/#", 1), (f"{args.root}/+/frame/#", 1)]
    client = make_client(BrokerSettings(host=host, port=port, client_id=f"bench-sink-{args.root}"), clean_start=True)
    client.on_message = counter.on_message
    client.on_connect = lambda c, u, f, reason, p: None if reason.is_failure else c.subscribe(filters)
    client.on_subscribe = lambda *a: subscribed.set()
    connect(client)
    try:
        if not subscribed.wait(10):
            print("error: no SUBACK within 10 s", file=sys.stderr)
            return 1
        print("subscribed", flush=True)
        seen = -1
        while not counter.done.wait(args.idle_timeout):
            if counter.received == seen:
                break  # nothing for a whole idle period
            seen = counter.received
    finally:
        disconnect(client)
    print(json.dumps({"received": counter.received, "first": counter.first, "last": counter.last}), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
