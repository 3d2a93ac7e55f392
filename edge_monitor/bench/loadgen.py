"""The load generator: a process publishing a :class:`~.load.LoadPlan` and recording when.

    python -m edge_monitor.bench.loadgen --broker HOST:PORT --archive A --root R --machines N
        --records FILE [--cuts K] [--chunk C] [--frames] [--speed S] [--seed X] [--encoding json|f32]

It encodes every chunk first, connects, prints ``ready <messages>`` and waits for a line on
stdin (``go``); only then does the clock start, so the generator costs little while it
publishes. Messages go out QoS 1 with the replay's flow control (:class:`Publisher`), each one
when due (``--speed 0``: as fast as the broker acknowledges), and the ``time.monotonic()`` after
each publish is recorded; Linux's monotonic clock is system-wide, so other processes can compare
their own times with it. At the end it writes the plan and the times to FILE (``.npz``) and prints
``done <messages> <refused>``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ..archive.mill import read_archive
from ..archive.publisher import Publisher
from ..archive.replay import ENCODINGS
from ..service.mqtt import (
    BrokerSettings,
    connect,
    disconnect,
    make_client,
    parse_address,
)
from .load import LoadPlan, build_plan, chunk_payloads, content_types, fill_cut_messages

ACK_TIMEOUT = 120.0  # seconds for the broker to acknowledge the last messages


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edge_monitor.bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", required=True, metavar="HOST:PORT")
    p.add_argument("--archive", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--machines", type=int, required=True)
    p.add_argument("--records", required=True, help="where to write the plan and the publish times (.npz)")
    p.add_argument("--cuts", type=int, default=1, help="cuts per machine")
    p.add_argument("--chunk", type=int, default=64, help="samples per chunk (or frame)")
    p.add_argument("--frames", action="store_true", help="each block of samples as one frame of every channel")
    p.add_argument("--speed", type=float, default=1.0, help="real time times S; 0: as fast as possible")
    p.add_argument("--seed", type=int, default=0, help="of the staggered start times")
    p.add_argument("--encoding", default="json", choices=ENCODINGS)
    p.add_argument("--client-id", default=None)
    return p.parse_args(argv)


def publish_plan(publisher: Publisher, plan: LoadPlan, topics: list[str], payloads: list[bytes],
                 types: list[str | None]) -> np.ndarray:
    """Publish every message when due; the monotonic time after each publish."""
    times = np.empty(len(plan))
    paced = plan.speed > 0
    started = time.monotonic()
    deadlines = (started + plan.due / plan.speed).tolist() if paced else None
    publish, now, sleep = publisher.publish, time.monotonic, time.sleep
    for i, (topic, payload, content_type) in enumerate(zip(topics, payloads, types)):
        if paced:
            delay = deadlines[i] - now()
            if delay > 0:
                sleep(delay)
        publish(topic, payload, content_type=content_type)
        times[i] = now()
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host, port = parse_address(args.broker)
    archive = read_archive(args.archive)
    plan = build_plan(archive, args.machines, cuts=args.cuts, chunk=args.chunk, speed=args.speed,
                      root=args.root, seed=args.seed, frames=args.frames)
    topics = plan.topics()
    payloads = chunk_payloads(plan, archive, args.encoding)
    client = make_client(BrokerSettings(host=host, port=port, client_id=args.client_id or f"bench-loadgen-{args.root}"),
                         clean_start=True)
    connect(client)
    try:
        publisher = Publisher(client)
        print(f"ready {len(plan)}", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1  # the benchmark went away before starting the load
        cpu = time.process_time()
        fill_cut_messages(plan, archive, payloads, time.time())
        times = publish_plan(publisher, plan, topics, payloads, content_types(plan, args.encoding))
        if not publisher.wait_all(ACK_TIMEOUT):
            print(f"error: {publisher.unacked} messages not acknowledged within {ACK_TIMEOUT:g} s", file=sys.stderr)
            return 1
        cpu = time.process_time() - cpu  # the load's own cost: it exits before the benchmark samples it last
    finally:
        disconnect(client)
    np.savez(args.records, meta=np.array(plan.meta()), time=times, encoding=np.array(args.encoding),
             refused=np.array(publisher.refused), cpu_seconds=np.array(cpu), **plan.arrays())
    print(f"done {len(plan)} {publisher.refused}", flush=True)
    return 0


def read_records(path) -> tuple[LoadPlan, np.ndarray, float]:
    """The plan a generator published, the monotonic time after each of its messages, and the CPU
    seconds it used publishing them."""
    with np.load(path) as data:
        return LoadPlan.from_saved(str(data["meta"]), data), np.asarray(data["time"]), float(data["cpu_seconds"])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
