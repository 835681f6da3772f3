#!/usr/bin/env python3
"""Publishes COUNT demo events, each in the transaction that records the application's row.

    DATABASE_URL=postgresql://app@localhost/shop python3 publish.py STREAM COUNT
"""
import os
import sys

import psycopg
from psycopg.types.json import Jsonb


def main():
    stream, count = sys.argv[1], int(sys.argv[2])
    with psycopg.connect(os.environ.get("DATABASE_URL", "")) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS demo_orders (n int PRIMARY KEY)")
        conn.commit()
        for n in range(1, count + 1):
            with conn.transaction():
                conn.execute("INSERT INTO demo_orders VALUES (%s) ON CONFLICT DO NOTHING", (n,))
                conn.execute(
                    "SELECT eventq.publish(%s, 'demo.created', %s, key => %s)",
                    (stream, Jsonb({"n": n, "fail": n % 10 == 0, "skip": n % 7 == 0}), f"order-{n}"),
                )
    print(f"published {count} events to {stream}")


if __name__ == "__main__":
    main()
