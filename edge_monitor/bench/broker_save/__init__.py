"""What Mosquitto's persistence costs and what a broker crash loses, to choose the "persistence"
settings of deploy/mosquitto/edge-monitor.conf (autosave_interval, autosave_on_changes).

    .venv/bin/python -m edge_monitor.bench.broker_save [--quick]

Starts its own mosquitto processes (the conf's queue settings, persistence on) on free ports of
127.0.0.1, in a temporary directory that it removes at the end, and prints five tables. The
traffic model is the conf's: one machine = 6 chunks/s of 5,006-byte JSON (250 samples) published
at QoS 1 by a data-acquisition client ("daq", clean start); the monitor = one persistent-session
subscriber ("edge-monitor": clean start off, session expiry 3600 s, QoS 1, acknowledging every
message, subscribing again on every connection as the monitor does).

How a save is timed: Mosquitto 2.0.11 writes the whole database to ``mosquitto.db.new``
(fflush + fsync), then renames it over ``mosquitto.db``; it logs "Saving in-memory database" when
it starts and nothing when it is done, and its log timestamps have whole seconds only (strftime).
So an inotify watch on the directory times each save: the creation of ``mosquitto.db.new`` (start)
to its rename (done); "written" is when the file was closed (after the fsync). The broker is a
single-threaded event loop: while it saves it serves no client, so a save's time is also how long
every publisher and subscriber waits. CPU seconds come from /proc/<pid>/stat.

Tables:

1. Steady state (subscriber keeping up) at 20 and 100 machines' rates: size of the database, time
   of one save (SIGUSR1), the broker's memory, and the longest PUBACK wait seen by the publisher
   while saves were triggered every ~0.3 s.
2. A queue for the absent monitor of N messages: database size, save time (wall, written, CPU)
   and the restart time (loading the database after a SIGKILL), plus a linear fit. The largest
   step publishes the conf's design hour (439,200 chunks); max_queued_bytes (2^31-1) holds fewer
   (the rest is dropped), and the drain at the end counts what the restored queue held.
3. What ``autosave_on_changes true`` counts as a change: fresh broker per row with
   ``autosave_interval 100`` (50 with --quick) = a save every 100 changes; "saves" are counted,
   "changes/event" is saves x 100 / events (resolution +-100/events), next to the rule read in the
   2.0.11 source (src/: every ``db.persistence_changes++``).
4. The crash window: per candidate setting, (a) steady state at 20 machines: SIGKILL, restart from
   the database, then what was lost (messages the broker had acknowledged to the publisher that
   the monitor never received), duplicates (redelivered), whether the monitor's session survived
   (session_present), whether retained alarms set 7 s and 1 s before the kill survived (else the
   older value came back), whether a persistent session created 7 s before the kill survived;
   (b) the monitor away (queue growing at 20 machines): what the crash lost, and the saves and
   bytes the broker wrote meanwhile. "last save" is how long before the kill the last save ended.
5. Cost with a growing or draining queue: measured (fill a queue as fast as the publisher goes and
   drain it, per setting: saves, bytes rewritten, fill and drain time) and derived for 20 machines
   from the fits of table 2 (saves/min, bytes rewritten/min, share of the broker's time spent
   saving, when the monitor is away for 1 min, 10 min, 1 h, and when it drains a full queue).

Figures depend on the disk (fsync) and on the box; on a shared 2-core box they vary by tens of %.
``--quick`` runs smaller queues and shorter windows (about 3 minutes in all; full: about 12).

Modules: ``harness`` (the broker, the save watcher, the chunks), ``clients`` (publisher, monitor,
the steady-state load process), ``experiments`` (tables 1, 2, 5a), ``changes`` (table 3),
``crash`` (table 4), ``report`` (the tables and the derived figures), ``cli``.
"""
