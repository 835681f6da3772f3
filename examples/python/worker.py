#!/usr/bin/env python3
"""An eventq worker: LISTEN, pull, ack / ignore / retry with the lease guard, graceful stop.

    DATABASE_URL=postgresql://app@localhost/shop python3 worker.py CONSUMER
"""
import os
import signal
import sys

import psycopg
from psycopg import sql

BATCH = 10


class Failed(Exception):
    pass


class NothingToDo(Exception):
    pass


def handle(subject, payload):
    """The application's work. Raise Failed to retry, NothingToDo to ignore."""
    if payload.get("fail"):
        raise Failed(f"cannot handle {subject} #{payload.get('n')}")
    if payload.get("skip"):
        raise NothingToDo("skipped by the demo")


def main():
    consumer = sys.argv[1]
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    with psycopg.connect(os.environ.get("DATABASE_URL", ""), autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"eventq_{consumer}")))
        print(f"worker for {consumer} started", flush=True)
        while not stopping:
            tasks = conn.execute(
                "SELECT task_id, subject, payload, attempt FROM eventq.pull(%s, %s)",
                (consumer, BATCH),
            ).fetchall()
            if not tasks:
                # woken by a notification, or after a second (without the background worker)
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass
                continue
            done, attempts = [], []
            for task_id, subject, payload, attempt in tasks:
                try:
                    handle(subject, payload)
                    done.append(task_id)
                    attempts.append(attempt)
                except NothingToDo as e:
                    conn.execute("SELECT eventq.ignore(%s, %s, %s, attempt => %s)",
                                 (consumer, task_id, str(e), attempt))
                except Exception as e:  # a failure of the handler, whatever it is
                    conn.execute("SELECT eventq.retry(%s, %s, %s, attempt => %s)",
                                 (consumer, task_id, str(e), attempt))
            if done:
                conn.execute("SELECT eventq.ack(%s, %s, %s)", (consumer, done, attempts))
        print(f"worker for {consumer} stopped", flush=True)


if __name__ == "__main__":
    main()
