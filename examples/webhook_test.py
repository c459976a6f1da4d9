#!/usr/bin/env python3
"""Runs buffered_webhook (with --fast-retry) against a real HTTP server on 127.0.0.1 that is down
for the first part of the run, then misbehaves a little once it is up: the first batch it sees
gets 503 with Retry-After: 1, the second 429, and the reply to the third is lost (the server
stores the events and closes the connection without answering). Checks that retry delivers
through all of it: no event is reported failed or abandoned, the server stores every event at
least once, every attempt of an event carries the same id, the 503'd batch did not come back
before its Retry-After, and the batch whose reply was lost was sent again. Prints how many
duplicates the server saw: they are allowed (delivery to the sink is at least once), not errors.

    webhook_test.py <path to buffered_webhook>
"""
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

EVENTS = 3000
RATE = 1500.0  # events per second: the run lasts about two seconds, plus the outage and faults
DOWN_FOR = 0.6  # seconds the server is down at the start (and until an attempt has failed)
RETRY_AFTER = 1  # seconds, in the 503 reply

lock = threading.Lock()
stored = []  # (seq, id) of every event the server stored, duplicates included
requests = []  # (time, first id, what the server did), in arrival order
faults = ["503", "429", "reply lost"]  # for the first three batches once the server is up


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        batch = json.loads(body)
        with lock:
            first = batch[0]["id"]
            action = "200"
            if first not in {f for _, f, _ in requests} and faults:
                action = faults.pop(0)  # each fault hits a new batch: attempts are not used up
            requests.append((time.monotonic(), first, action))
            if action in ("200", "reply lost"):
                stored.extend((e["seq"], e["id"]) for e in batch)
        if action == "reply lost":
            self.close_connection = True  # stored, but the client never hears so
            return
        self.send_response(int(action))
        if action == "503":
            self.send_header("Retry-After", str(RETRY_AFTER))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    binary = sys.argv[1]
    port = free_port()
    lines = []
    attempt_failed = threading.Event()

    def read_output(stream):
        for line in stream:
            lines.append(line)
            if line.startswith("attempt "):
                attempt_failed.set()

    with tempfile.TemporaryDirectory() as tmp:
        lost_file = Path(tmp) / "lost.txt"
        started = time.monotonic()
        proc = subprocess.Popen(
            [binary, str(port), str(EVENTS), str(RATE), str(lost_file), "--fast-retry"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        reader = threading.Thread(target=read_output, args=(proc.stdout,), daemon=True)
        reader.start()
        # The server is down: attempts fail with "connection refused". It stays down at least
        # DOWN_FOR and until one attempt has failed, so the outage is seen even on a slow machine.
        time.sleep(DOWN_FOR)
        outage_seen = attempt_failed.wait(timeout=60)
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            print("FAIL: the example hung")
            return 1
        finally:
            server.shutdown()
        reader.join(timeout=10)
        elapsed = time.monotonic() - started
        print("".join(lines), end="")
        lost = [int(x) for x in lost_file.read_text().split()]

    with lock:
        got = list(stored)
        reqs = list(requests)
    seqs = {seq for seq, _ in got}
    ids = {}
    for seq, event_id in got:
        ids.setdefault(seq, set()).add(event_id)
    duplicates = len(got) - len(set(got))
    problems = []
    if proc.returncode != 0:
        problems.append(f"example exited {proc.returncode}")
    if lost:
        problems.append(f"{len(lost)} events were reported failed or abandoned")
    if not any(line.startswith("reported failed: 0, abandoned: 0") for line in lines):
        problems.append("the example did not report 0 failed and 0 abandoned")
    if seqs != set(range(EVENTS)):
        problems.append(f"the server stored {len(seqs)} distinct events, not all {EVENTS}")
    if any(len(v) != 1 for v in ids.values()):
        problems.append("an event was sent with different ids")
    if len({i for v in ids.values() for i in v}) != len(seqs):
        problems.append("two events were sent with the same id")
    if not outage_seen:
        problems.append("the outage was not seen: no attempt failed while the server was down")
    faulted = {action: (t, first) for t, first, action in reqs if action != "200"}
    for action, (t, first) in faulted.items():
        again = [t2 for t2, first2, _ in reqs if first2 == first and t2 > t]
        if not again:
            problems.append(f"the batch that got {action} was not sent again")
        elif action == "503" and again[0] - t < RETRY_AFTER - 0.05:  # "not before": no upper bound
            problems.append(f"the batch answered 503 came back after {again[0] - t:.2f} s, "
                            f"before its Retry-After of {RETRY_AFTER} s")
    if len(faulted) != 3:
        problems.append(f"only {len(faulted)} of the server's three faults happened")
    print(f"events sent {EVENTS}, server stored {len(got)} ({len(seqs)} distinct, "
          f"{duplicates} duplicates) in {len(reqs)} requests, reported failed {len(lost)}, "
          f"run took {elapsed:.1f} s")
    for p in problems:
        print("FAIL:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
