"""The benchmark (``make bench``, ``python -m benchmarks``), side by side with quixstreams.

It lives in the repository, not in the installed package: it needs the dev extra
(quixstreams, rich). One run starts a fresh broker (Apache Kafka by default) and, each
phase on topics of its own, measures:

- fold throughput of the query service with one fold worker and with ``--workers``,
  on a narrow and a wide workload, each produced before the services start, with each
  worker's peak RSS (``ours``), the same events folded by quixstreams (``quix``);
- a fold worker's peak RSS with a fixed cache, for few orders and for many (``memory``);
- restore from the changelog with the state directory deleted, and a warm restart
  (``ours``);
- GET latency at a fixed open-loop rate while the service folds (``interactive``);
- GET latency through one of two query instances, idle: forwarded to the other, and
  answered locally as the baseline (``interactive``);
- command-to-visible latency through the command and query services (``interactive``);
- the same restore with a quixstreams application (``quix`` runs ``quix_app``);
- consumer group join and rebalances, classic protocol and KIP-848 (``groups``);
- command latency through two command instances sharing the partitions, each command to
  either (so about half are forwarded), at a fixed rate, and the most commands a second
  they sustain with p99 <= 100 ms (``commands``).

``--only PHASE`` (repeatable) runs some phases alone, e.g. ``--only commands``.

Every process it starts is a child in a session of its own, stopped by PID when its phase
ends or fails; all traffic stays on 127.0.0.1.
"""
