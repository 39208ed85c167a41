#!/usr/bin/env python3
"""Runs an ArcadeDB server with its Bolt listener, for the Neo4j sink tests.

Why: neo4rs speaks Bolt 4.x, and ArcadeDB (from the `arcadedb-embedded`
wheel, installed by scripts/install-arcadedb.sh) is the Bolt 4.4 server that
runs on these machines without Docker. Every listener binds 127.0.0.1.

Usage:
    arcadedb_server.py --dir DIR --bolt-port P --http-port H \
        [--password PW] [--database NAME ...]

Creates each database (default `neo4j`), prints `READY bolt=P http=H` on
stdout once the Bolt port accepts connections, and stops the server cleanly
on SIGTERM or SIGINT (exit code 0). A test harness waits for the READY line
and sends SIGTERM to stop it.
"""

import argparse
import os
import signal
import socket
import sys
import threading
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True, help="server root directory")
    parser.add_argument("--bolt-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--password", default="pgfanout-test", help="root password (8+ chars)")
    parser.add_argument("--database", action="append", help="database to create (repeatable; default neo4j)")
    parser.add_argument("--heap", default=os.environ.get("PGFANOUT_ARCADEDB_HEAP", "1g"), help="JVM heap size")
    args = parser.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    # The JVM writes logs relative to the working directory.
    os.chdir(args.dir)

    import arcadedb_embedded as arcadedb  # imported late: starts nothing by itself

    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server = arcadedb.ArcadeDBServer(
        root_path=os.path.join(args.dir, "databases"),
        root_password=args.password,
        config={
            "host": "127.0.0.1",
            "http_port": args.http_port,
            "server_plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
            "bolt_port": args.bolt_port,
            "bolt_host": "127.0.0.1",
        },
        jvm_kwargs={"heap_size": args.heap},
    )
    server.start()
    try:
        for name in args.database or ["neo4j"]:
            server.create_database(name)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", args.bolt_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    print("ERROR bolt port never opened", flush=True)
                    return 1
                time.sleep(0.05)
        print(f"READY bolt={args.bolt_port} http={args.http_port}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
