"""Key-server replicas on PostgreSQL next to one key server on SQLite, in one run: signed Decrypt
and CreateKey throughput with 1, 2 and 3 replicas on one PostgreSQL database, and the time a
change made through one replica takes to be visible through another. Called by
`scripts/bench-kms-replicas`, which builds what it needs; see docs/benchmarks.md.

Throughput is measured as in `scripts/bench-kms-wrk`: each request is signed once and wrk
replays it on keep-alive connections — here one wrk per replica, the connections split between
them, all started together; req/s is their sum, server CPU per request the CPU time of every
replica process over the window divided by all requests. PostgreSQL's own CPU is reported
beside it (its processes' utime + stime from /proc).

Visibility: a key created through replica A (its CreateKey answered), then DescribeKey through
replica B in a tight loop until B knows it; the time between A's answer and B's first success,
over many keys, p50 and p99.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kms_wrk import (  # noqa: E402 — the sibling script's helpers
    ACCOUNT, AKID, REGION, SECRET, check_once, cpu_seconds, free_port, lua, parse_ms, signed_headers, stop_process,
    wait_port)

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]  # Debian 12: 15


class Postgres:
    """A throwaway cluster in a temporary directory, run as the `postgres` user."""

    def __init__(self, root: str):
        self.dir = os.path.join(root, "pg")
        self.port = free_port()
        os.makedirs(self.dir)
        shutil.chown(self.dir, "postgres")
        os.chmod(root, 0o755)
        self._pg("initdb", "-D", self.dir, "-A", "trust", "-U", "envelope", "--no-sync")
        self.start()
        self.url = f"postgres://envelope@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def start(self) -> None:
        """Starts the cluster (again, after `stop`) and waits until it accepts connections."""
        self._pg("pg_ctl", "-D", self.dir, "-w", "-l", os.path.join(self.dir, "log"), "-o",
                 f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on", "start")

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/{tool}", *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cpu(self) -> float:
        """CPU seconds of every process of the cluster (postmaster and backends)."""
        total, uid_pg = 0.0, str(pwd.getpwnam("postgres").pw_uid)
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
                with open(f"/proc/{pid}/status") as f:
                    uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
            except OSError:
                continue
            if uid == uid_pg and b"postgres" in cmd:
                try:
                    total += cpu_seconds(int(pid))
                except OSError:
                    pass
        return total

    def drop_keys(self) -> None:
        """An empty store for the next configuration."""
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/psql", "-h", self.dir, "-p", str(self.port),
                        "-U", "envelope", "-d", "postgres", "-q", "-c",
                        "DROP SCHEMA public CASCADE; CREATE SCHEMA public;"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, the data stays."""
        self._pg("pg_ctl", "-D", self.dir, "-m", "fast", "-w", "stop")


class Replica:
    def __init__(self, binary: str, root: str, name: str, creds: str, store: str | None, seed_root: str | None):
        self.data = os.path.join(root, name)
        os.makedirs(self.data, mode=0o700)
        if seed_root:
            # The same root key on every replica (the database holds sealed material only).
            shutil.copy(seed_root, os.path.join(self.data, "root.key"))
            os.chmod(os.path.join(self.data, "root.key"), 0o600)
        self.port = free_port()
        cmd = [binary, "kms", "serve", "--listen", f"127.0.0.1:{self.port}", "--http-addr", "off",
               "--log-level", "warn", "--credentials", creds, "--data-dir", self.data]
        if store:
            cmd += ["--store", store]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        wait_port(self.port, self.proc, name)

    def client(self):
        return boto3.client("kms", endpoint_url=f"http://127.0.0.1:{self.port}", region_name=REGION,
                            aws_access_key_id=AKID, aws_secret_access_key=SECRET,
                            config=Config(retries={"max_attempts": 1}))

    def stop(self) -> None:
        stop_process(self.proc)


def bodies(replica: Replica) -> dict[str, str]:
    import base64
    import json
    kms = replica.client()
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"0123456789abcdef0123456789abcdef",
                       EncryptionContext={"bench": "replicas"})["CiphertextBlob"]
    return {
        "Decrypt": json.dumps({"CiphertextBlob": base64.b64encode(blob).decode(),
                               "EncryptionContext": {"bench": "replicas"}}),
        "CreateKey": json.dumps({"Description": "bench"}),
    }


def wrk_all(replicas: list[Replica], op: str, body: str, args, tmpdir: str, pg: Postgres | None):
    """One wrk per replica at once; returns (req/s, median p50 ms, max p99 ms, replica CPU µs/req,
    PostgreSQL CPU µs/req)."""
    per = max(1, args.connections // len(replicas))
    cmds = []
    for i, r in enumerate(replicas):
        headers = signed_headers(r.port, op, body)
        check_once(r.port, headers, body, f"replica {i + 1} {op}")
        script = os.path.join(tmpdir, f"{op}-{i}.lua")
        with open(script, "w") as f:
            f.write(lua(headers, body))
        cmds.append(["wrk", "-t", "1", "-c", str(per), "--timeout", "30s", "-s", script, "--latency",
                     f"http://127.0.0.1:{r.port}/"])
    for c in cmds:
        subprocess.run(c + ["-d", args.warmup], check=True, stdout=subprocess.DEVNULL)
    before = [cpu_seconds(r.proc.pid) for r in replicas]
    pg_before = pg.cpu() if pg else 0.0
    procs = [subprocess.Popen(c + ["-d", args.duration], stdout=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate()[0] for p in procs]
    after = [cpu_seconds(r.proc.pid) for r in replicas]
    pg_after = pg.cpu() if pg else 0.0
    import re
    rps = requests = 0.0
    p50s, p99s = [], []
    for out in outs:
        if "Non-2xx" in out or "Socket errors" in out:
            raise SystemExit(f"{op}: wrk saw failed requests:\n{out}")
        requests += int(re.search(r"(\d+) requests in", out).group(1))
        rps += float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p50s.append(parse_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)))
        p99s.append(parse_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)))
    cpu = (sum(after) - sum(before)) / max(requests, 1) * 1e6
    pg_cpu = (pg_after - pg_before) / max(requests, 1) * 1e6
    return rps, statistics.median(p50s), max(p99s), cpu, pg_cpu


def visibility(a: Replica, b: Replica, n: int) -> list[float]:
    """Milliseconds from A's CreateKey answer to B's first DescribeKey that finds the key."""
    ca, cb = a.client(), b.client()
    out = []
    for _ in range(n):
        key = ca.create_key()["KeyMetadata"]["KeyId"]
        t0 = time.perf_counter()
        while True:
            try:
                cb.describe_key(KeyId=key)
                break
            except ClientError as e:
                if e.response["Error"]["Code"] != "NotFoundException":
                    raise
            if time.perf_counter() - t0 > 30:
                raise SystemExit(f"replica B never saw {key}")
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envelope-bin", default="target/release/envelope")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--duration", default="8s")
    ap.add_argument("--warmup", default="2s")
    ap.add_argument("--connections", type=int, default=30)
    ap.add_argument("--visibility", type=int, default=200, help="keys created for the visibility figure")
    args = ap.parse_args()

    root = tempfile.mkdtemp(prefix="bench-kms-replicas-")
    creds = os.path.join(root, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n"
                f"  principal: arn:aws:iam::{ACCOUNT}:user/bench\n")
    os.chmod(creds, 0o600)
    pg = Postgres(root)
    configs = [("SQLite", 1), ("PostgreSQL", 1), ("PostgreSQL", 2), ("PostgreSQL", 3)]
    results: dict[tuple[str, int, str], list[tuple]] = {}
    vis: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            for run in range(args.runs):
                for n_cfg, (engine, n) in enumerate(configs):
                    store = pg.url if engine == "PostgreSQL" else None
                    if store:
                        pg.drop_keys()
                    replicas: list[Replica] = []
                    try:
                        for i in range(n):
                            seed = os.path.join(replicas[0].data, "root.key") if replicas else None
                            replicas.append(Replica(args.envelope_bin, root, f"r{run}-{n_cfg}-{i}", creds, store, seed))
                        b = bodies(replicas[0])
                        if n > 1:
                            time.sleep(0.5)  # the key made on replica 1 reaches the others
                        for op in ("Decrypt", "CreateKey"):
                            r = wrk_all(replicas, op, b[op], args, tmpdir, pg if store else None)
                            results.setdefault((engine, n, op), []).append(r)
                            print(f"run {run + 1} {engine:10} x{n} {op:9} {r[0]:8.0f} req/s p50 {r[1]:6.2f} ms "
                                  f"p99 {r[2]:6.2f} ms cpu {r[3]:7.1f} µs/req pg {r[4]:6.1f} µs/req",
                                  file=sys.stderr, flush=True)
                        if n == 2 and run == 0:
                            vis = visibility(replicas[0], replicas[1], args.visibility)
                    finally:
                        for r in replicas:
                            r.stop()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nwrk: {args.connections} connections split between the replicas, {args.duration} per operation, "
          f"{args.runs} runs, medians (req/s range in brackets)\n")
    print("| store | replicas | operation | req/s | p50 ms | p99 ms | replica CPU µs/req | PostgreSQL CPU µs/req |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for (engine, n, op), rs in results.items():
        med = [statistics.median(x[i] for x in rs) for i in range(5)]
        lo, hi = min(x[0] for x in rs), max(x[0] for x in rs)
        pgc = f"{med[4]:.1f}" if engine == "PostgreSQL" else "—"
        print(f"| {engine} | {n} | {op} | {med[0]:,.0f} [{lo:,.0f}–{hi:,.0f}] | {med[1]:.2f} | {med[2]:.2f} | "
              f"{med[3]:.1f} | {pgc} |")
    if vis:
        print(f"\nVisibility of a key created through replica A in replica B ({len(vis)} keys): "
              f"p50 {pct(vis, 0.5):.1f} ms, p99 {pct(vis, 0.99):.1f} ms, max {max(vis):.1f} ms")


if __name__ == "__main__":
    main()
