#!/usr/bin/env python3
"""Runs buffered_webhook against a real HTTP server on 127.0.0.1 that is down for the first
part of the run. Checks that every event was received by the server or reported failed by the
example, exactly once, and that nothing hung.

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
RATE = 1500.0  # events per second: the run lasts about two seconds
DOWN_FOR = 0.6  # seconds the server is down at the start

received = []
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        batch = json.loads(body)
        with lock:
            received.extend(e["seq"] for e in batch)
        self.send_response(200)
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
    with tempfile.TemporaryDirectory() as tmp:
        failed_file = Path(tmp) / "failed.txt"
        started = time.monotonic()
        proc = subprocess.Popen([binary, str(port), str(EVENTS), str(RATE), str(failed_file)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(DOWN_FOR)  # the server is down: batches fail with "connection refused"
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            print("FAIL: the example hung")
            return 1
        finally:
            server.shutdown()
        elapsed = time.monotonic() - started
        print(out, end="")
        failed = [int(x) for x in failed_file.read_text().split()]

    with lock:
        got = list(received)
    problems = []
    if proc.returncode != 0:
        problems.append(f"example exited {proc.returncode}")
    if len(got) != len(set(got)):
        problems.append("the server received some events twice")
    if set(got) & set(failed):
        problems.append("some events were both received and reported failed")
    if sorted(got + failed) != list(range(EVENTS)):
        problems.append("received + reported is not every event exactly once")
    if not failed:
        problems.append("the outage was not seen: no batch failed")
    if not got:
        problems.append("the server received nothing")
    print(f"server received {len(got)} events in order={got == sorted(got)}, "
          f"reported failed {len(failed)}, run took {elapsed:.1f} s")
    for p in problems:
        print("FAIL:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
