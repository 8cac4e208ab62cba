"""The Celery app behind benchmarks/celery_peer.py: one null task, broker and result backend on one Redis.

The worker subprocess loads `app` (`celery -A benchmarks.celery_app worker ...`), configured from the
environment that celery_peer.run_celery sets for it; the benchmark's client builds its own app with
`make_app`, so both agree on the task name and the queue.
"""

from __future__ import annotations

import os

from celery import Celery

URL_ENV = "CELERY_PEER_REDIS_URL"  # broker and result backend, e.g. redis://127.0.0.1:6390/0
QUEUE_ENV = "CELERY_PEER_QUEUE"


def null(i: int) -> int:
    return i


def make_app(redis_url: str, queue: str) -> Celery:
    app = Celery("celery_peer", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        # Durable-ish, like our Redis Streams consumer that acks a task only once it has finished: the
        # message stays in kombu's unacked hash while the task runs, so a worker that dies mid-task has it
        # redelivered (after the visibility timeout, 1 h by default). Celery's default acks on receipt.
        # Measured on the 2-core machine: no difference in tasks/s against early acks, within the noise.
        task_acks_late=True,
        # Everything else stays at Celery's defaults, which are already its fast path for this shape:
        # JSON serializer, prefetch multiplier 4 (1, 4 and 64 measured the same), no task events, no
        # STARTED state, results pushed to waiting clients over Redis pub/sub.
        broker_connection_retry_on_startup=True,  # silences a CPendingDeprecationWarning, no behaviour change
    )
    app.task(name="null")(null)
    return app


# Only the worker subprocess has these set; the client imports this module just for make_app.
app = make_app(os.environ[URL_ENV], os.environ[QUEUE_ENV]) if URL_ENV in os.environ else None
