"""``edge-monitor bench``: the throughput benchmark, the layer on top of ``archive``.

One run starts its own Mosquitto, measures the model's scoring call and the broker's fan-in, then
feeds the real daemon (its own process) from a load generator process at several machine counts,
and reports throughput, CPU, memory, latency and lost or duplicated windows (:mod:`.cli`).
"""
