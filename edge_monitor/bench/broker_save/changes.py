"""Table 3: what ``autosave_on_changes true`` counts as a change, event by event, each on a fresh
broker that saves every ``per_save`` changes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...service.mqtt import connect, disconnect, make_client
from .clients import Monitor, Publisher, plain_client, settings
from .harness import ROOT, Broker, SaveWatcher, wait_idle, wait_until


@dataclass
class ChangeRow:
    event: str
    events: int
    saves: int
    logged: int
    rule: str


def count_changes(workdir: Path, n: int, per_save: int) -> list[ChangeRow]:
    """Each row on a fresh broker with ``autosave_on_changes true`` and ``autosave_interval
    per_save``: ``n`` events of one kind, the saves they caused."""
    rows: list[ChangeRow] = []

    def phase(name: str, rule: str, setup, run) -> None:
        broker = Broker(workdir, f"changes-{len(rows)}", autosave_interval=per_save,
                        autosave_on_changes="true")
        watcher = None
        try:
            broker.start()
            watcher = SaveWatcher(broker)
            context = setup(broker.port)
            time.sleep(0.3)
            before, logged_before = watcher.count(), broker.logged_saves()
            events = run(broker.port, context)
            wait_idle(broker, watcher)
            rows.append(ChangeRow(name, events, watcher.count() - before,
                                  broker.logged_saves() - logged_before, rule))
            for c in context.get("close", []):
                c()
        finally:
            if watcher is not None:
                watcher.close()
            broker.kill()  # no shutdown save wanted; nothing here is kept

    def nothing(port):
        return {}

    def subscriber(qos: int, clean_start: bool, stay: bool = True):
        def setup(port):
            if clean_start:
                client = make_client(settings(port, "dashboard"), clean_start=True)
                received = []
                client.on_message = lambda c, u, m: received.append(1)
                connect(client)
                client.subscribe(f"{ROOT}/+/signal/#", qos)
            else:
                monitor = Monitor(port).start()
                client, received = monitor.client, monitor.received
            time.sleep(0.2)
            if not stay:
                disconnect(client)
                return {"received": received, "close": []}
            return {"received": received, "close": [lambda: disconnect(client)]}
        return setup

    def publish_paced(burst: bool, wait_received: bool):
        def run(port, context):
            publisher = Publisher(port, 20).start()
            for seq in range(n):
                publisher.publish(seq)
                if not burst and seq % 5 == 4:
                    time.sleep(0.005)  # ~1000/s: each chunk delivered before the next ones
            publisher.wait_acknowledged(60)
            if wait_received:
                wait_until(lambda: len(context["received"]) >= n, 60)
            publisher.stop()
            return n
        return run

    def drain_on_reconnect(port, context):
        monitor = Monitor(port)
        monitor.client.on_connect = lambda c, u, f, r, p: monitor.subscribed.set()  # no resubscribe
        connect(monitor.client)
        wait_until(lambda: len(monitor.received) >= n, 60)
        context["close"].append(monitor.stop)
        return n

    def queue_then(port):
        context = subscriber(1, False, stay=False)(port)
        publish_paced(True, False)(port, context)
        return context

    def retained(clear: bool):
        def run(port, context):
            client, _ = plain_client(port, "edge-monitor-out")
            infos = []
            for i in range(n):
                infos.append(client.publish(f"{ROOT}/m{i:04d}/alarm", b"" if clear else b'{"state": "ok"}',
                                            qos=1, retain=True))
            for info in infos:
                info.wait_for_publish(30)
            disconnect(client)
            return n
        return run

    def setup_retained(port):
        retained(False)(port, {})
        return {}

    def subscribes(filters_per_packet: int):
        """``n`` filters in SUBSCRIBE packets of ``filters_per_packet``; one event per filter."""
        def run(port, context):
            client, _ = plain_client(port, "dashboard", clean_start=False)
            done = threading.Semaphore(0)
            client.on_subscribe = lambda *a: done.release()
            filters = [f"{ROOT}/m{i:04d}/score" for i in range(n)]
            for i in range(0, n, filters_per_packet):
                client.subscribe([(f, 1) for f in filters[i:i + filters_per_packet]])
                done.acquire(timeout=10)
            disconnect(client)
            return n
        return run

    def connects(clean_start: bool):
        def run(port, context):
            count = max(n // 2, per_save * 2)
            for _ in range(count):
                client, _ = plain_client(port, "dashboard", clean_start=clean_start)
                disconnect(client)
            return count
        return run

    def unsubscribes(port, context):
        # SUBSCRIBEs of the setup counted before; only the UNSUBSCRIBE packets here
        client, _ = plain_client(port, "dashboard", clean_start=False)
        done = threading.Semaphore(0)
        client.on_unsubscribe = lambda *a: done.release()
        for i in range(n):
            client.unsubscribe(f"{ROOT}/m{i:04d}/score")
            done.acquire(timeout=10)
        disconnect(client)
        return n

    def setup_subscriptions(port):
        subscribes(1)(port, {})
        return {}

    phase("QoS 1 chunk, nobody subscribed", "incoming QoS 1 is not stored: 0", nothing, publish_paced(False, False))
    phase("QoS 1 chunk -> monitor online (persistent, QoS 1), acked", "its PUBACK: 1 (db__message_delete_outgoing)",
          subscriber(1, False), publish_paced(False, True))
    phase("QoS 1 chunk -> clean-start QoS 1 subscriber, acked", "its PUBACK: 1 (any client's)",
          subscriber(1, True), publish_paced(False, True))
    phase("QoS 1 chunk -> QoS 0 subscriber", "no PUBACK, not queued: 0", subscriber(0, True), publish_paced(False, True))
    phase("burst of chunks -> monitor online (beyond 20 in flight)", "queued +1, PUBACK +1: 1-2",
          subscriber(1, False), publish_paced(True, True))
    phase("chunk queued for the monitor away", "db__message_insert, state queued: 1",
          subscriber(1, False, stay=False), publish_paced(True, False))
    phase("queued chunk delivered on reconnect, acked", "its PUBACK: 1 (+1 for the reconnect)",
          queue_then, drain_on_reconnect)
    phase("retained message set", "retain__store: 1", nothing, retained(False))
    phase("retained message cleared (empty payload)", "retain__store: 1", setup_retained, retained(True))
    phase("SUBSCRIBE packet, 1 filter", "handle__subscribe: 1 per packet", nothing, subscribes(1))
    phase("filter in SUBSCRIBE packets of 10 filters", "1 per packet: 0.1 per filter", nothing, subscribes(10))
    phase("UNSUBSCRIBE packet, 1 filter", "handle__unsubscribe: 1 per packet", setup_subscriptions, unsubscribes)
    phase("CONNECT, clean start off (persistent session)", "handle__connect: 1", nothing, connects(False))
    phase("CONNECT, clean start on", "0", nothing, connects(True))
    return rows
