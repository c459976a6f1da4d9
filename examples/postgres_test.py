#!/usr/bin/env python3
"""Runs buffered_postgres against a throwaway PostgreSQL cluster that this script makes itself
(initdb + pg_ctl in a temporary directory, as the `postgres` user when run as root: the server
refuses root; listening only on a Unix socket in that directory), then stops and deletes it, also
on failure or when interrupted.

1. `bench`: events/s with batches of 400 versus max_batch_size = 1 on that server.
2. `fault`: while two producers write, the server is stopped with `pg_ctl stop -m immediate`
   (a crash: every connection is cut) for about a second, then started again (crash recovery).
   The example also answers the third batch as if its reply were lost after the commit, so that
   batch is sent twice. Checks: the example exits 0 and reports 0 failed / 0 abandoned; an
   attempt did fail during the outage and was retried; the sink made new connections by itself;
   ON CONFLICT skipped the resent rows; and psql, independently, finds every event in the table
   exactly once (count(*) == count(DISTINCT id) == events).

Exits 77 (ctest SKIP_RETURN_CODE) when no PostgreSQL server is installed, or 1 then if the
environment has BUFFERED_REQUIRE_POSTGRES=1 (CI sets it: there, a skip would hide a lost test).

    postgres_test.py <path to buffered_postgres>
"""
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77
BENCH_EVENTS = 20000
FAULT_EVENTS = 20000
FAULT_RATE = 4000.0  # events per second: about five seconds of producing
STOP_AFTER = 1.5  # seconds after the producers start, the server is stopped ...
DOWN_FOR = 1.0  # ... for this long, then started again


def server_bin_dir():
    """The directory holding initdb and pg_ctl: PATH first, then Debian's versioned dirs."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and os.path.dirname(initdb) == os.path.dirname(pg_ctl):
        return os.path.dirname(os.path.realpath(initdb))

    def version(path):
        m = re.search(r"/postgresql/(\d+)/bin$", path)
        return int(m.group(1)) if m else 0

    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(
                os.path.join(d, "pg_ctl"), os.X_OK):
            return d
    return None


class Cluster:
    def __init__(self, bin_dir):
        self.bin_dir = bin_dir
        self.as_user = []
        if os.geteuid() == 0:  # the server refuses to run as root
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.dir = tempfile.mkdtemp(prefix="buffered-pg-")  # short: a socket path has a limit
        if self.as_user:
            os.chown(self.dir, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.started = False
        self.conninfo = f"host={self.dir} port=5432 user=postgres dbname=postgres"

    def run(self, *args, check=True):
        cmd = self.as_user + [os.path.join(self.bin_dir, args[0])] + list(args[1:])
        r = subprocess.run(cmd, cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}")
        return r

    def init(self):
        self.run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-locale",
                 "-E", "UTF8", "--no-sync")

    def start(self):
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.dir}' -c port=5432"
        self.run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options,
                 "start")
        self.started = True

    def stop(self, mode="fast"):
        self.run("pg_ctl", "-D", self.data, "-w", "-t", "60", "-m", mode, "stop")
        self.started = False

    def psql(self, sql):
        psql = os.path.join(self.bin_dir, "psql")
        if not os.access(psql, os.X_OK):
            psql = shutil.which("psql") or "psql"
        return subprocess.run([psql, "-X", "-At", "-d", self.conninfo, "-c", sql],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=60, check=True).stdout.strip()

    def destroy(self):
        if self.started or os.path.exists(os.path.join(self.data, "postmaster.pid")):
            try:
                self.stop("immediate")
            except Exception as e:  # noqa: BLE001 (best effort: the directory goes anyway)
                print(f"cleanup: {e}")
        shutil.rmtree(self.dir, ignore_errors=True)


def run_fault(binary, cluster, problems):
    lines = []
    producing = threading.Event()

    def read_output(stream):
        for line in stream:
            lines.append(line)
            if line.startswith("producing"):
                producing.set()

    proc = subprocess.Popen([binary, cluster.conninfo, "fault", str(FAULT_EVENTS),
                             str(FAULT_RATE)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    reader = threading.Thread(target=read_output, args=(proc.stdout,), daemon=True)
    reader.start()
    down = None
    stopped_while_running = False
    try:
        if not producing.wait(timeout=60):
            problems.append("the example never started producing")
        time.sleep(STOP_AFTER)
        stopped_while_running = proc.poll() is None
        t0 = time.monotonic()
        cluster.stop("immediate")
        time.sleep(DOWN_FOR)
        cluster.start()
        down = time.monotonic() - t0
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        problems.append("the example hung")
        return
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        print("".join(lines), end="")
    out = "".join(lines)
    if down is not None:
        print(f"server stopped (-m immediate) {STOP_AFTER} s after the producers started, "
              f"down for {down:.1f} s including its restart")
    if proc.returncode != 0:
        problems.append(f"example exited {proc.returncode}")
    if not stopped_while_running:
        problems.append("the example had finished before the server was stopped")
    if "reported failed: 0, abandoned: 0" not in out:
        problems.append("the example did not report 0 failed and 0 abandoned")
    if not re.search(r"^attempt \d+ of ids .*\(retryable\)$", out, re.M):
        problems.append("no attempt failed during the outage: it was not seen")
    m = re.search(r"^retries +(\d+)$", out, re.M)
    if not m or int(m.group(1)) == 0:
        problems.append("Stats::retries is 0: nothing was retried")
    m = re.search(r"^connections made: (\d+);.* duplicates skipped by ON CONFLICT (\d+)$", out,
                  re.M)
    if not m or int(m.group(1)) < 3:  # the first, after the lost reply, after the restart
        problems.append("the sink did not reconnect by itself")
    if not m or int(m.group(2)) == 0:
        problems.append("the batch whose reply was lost was not sent again")
    if not re.search(r"^attempt 1 of ids .*reply lost.*\(retryable\)$", out, re.M):
        problems.append("no reply was lost: the idempotence was not exercised")
    for field in ("failed", "abandoned"):
        m = re.search(rf"^{field} +(\d+)$", out, re.M)
        if not m or int(m.group(1)) != 0:
            problems.append(f"Stats::{field} is not 0")
    counts = cluster.psql("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM events")
    print(f"psql: count(*)|count(DISTINCT id)|min|max = {counts}")
    if counts != f"{FAULT_EVENTS}|{FAULT_EVENTS}|0|{FAULT_EVENTS - 1}":
        problems.append(f"the table does not hold each of the {FAULT_EVENTS} events once")


def skip(why):
    if os.environ.get("BUFFERED_REQUIRE_POSTGRES") == "1":
        print(f"FAIL: BUFFERED_REQUIRE_POSTGRES=1, but {why}")
        return 1
    print(f"SKIPPED: {why}")
    return SKIP


def main():
    binary = sys.argv[1]
    bin_dir = server_bin_dir()
    if not bin_dir:
        return skip("no PostgreSQL server installed (initdb and pg_ctl not found; "
                    "Debian: apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return skip("running as root, and there is no postgres user to run the server as")
        if not shutil.which("runuser"):
            return skip("running as root, and runuser is missing")

    # ctest stops a test that runs too long with a signal: clean up then too.
    def on_signal(signum, _frame):
        raise SystemExit(f"interrupted by signal {signum}")

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    problems = []
    cluster = Cluster(bin_dir)
    try:
        cluster.init()
        cluster.start()
        print(f"cluster: {bin_dir}, socket in {cluster.dir}")
        bench = subprocess.run([binary, cluster.conninfo, "bench", str(BENCH_EVENTS)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=240)
        print(bench.stdout, end="")
        if bench.returncode != 0:
            problems.append(f"bench exited {bench.returncode}")
        run_fault(binary, cluster, problems)
    except Exception as e:  # noqa: BLE001 (reported as a failure, after the cleanup)
        problems.append(f"{type(e).__name__}: {e}")
        if os.path.exists(cluster.log):
            with open(cluster.log, encoding="utf-8", errors="replace") as f:
                print("server log (tail):\n" + "".join(f.readlines()[-30:]))
    finally:
        cluster.destroy()
    for p in problems:
        print("FAIL:", p)
    if not problems:
        print("PASS: every event in the table exactly once through a server restart")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
