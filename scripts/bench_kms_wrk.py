"""Key-server throughput and server CPU per request, measured with wrk replaying one signed
request — the same method for `envelope kms serve`, moto_server and a trivial axum handler (the
ceiling). Called by `scripts/bench-kms-wrk`, which builds what it needs; see docs/benchmarks.md.

Each run starts every server in turn (the order rotates between runs so drift over the session
falls on all of them), prepares a key and a ciphertext on it with boto3, signs each request once
with botocore's SigV4 signer and has wrk replay it on N keep-alive connections. The server's CPU
time (utime + stime of its process, from /proc) over the measured window, divided by the
requests wrk completed, is the CPU per request. Every response must be 2xx: wrk's non-2xx count
fails the run (a signature the server refuses would otherwise be measured as fast errors).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AKID = "AKIAENVELOPEBENCHWRK1"
SECRET = "bench-kms-wrk-secret-0123456789abcdef"
REGION = "us-east-1"
ACCOUNT = "111122223333"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its threads (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    tmp: tempfile.TemporaryDirectory | None = None
    bodies: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        stop_process(self.proc)
        if self.tmp:
            self.tmp.cleanup()


def start_envelope(name: str, binary: str) -> Server:
    tmp = tempfile.TemporaryDirectory(prefix="bench-kms-wrk-")
    creds = os.path.join(tmp.name, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n"
                f"  principal: arn:aws:iam::{ACCOUNT}:user/bench\n")
    os.chmod(creds, 0o600)
    port = free_port()
    # The defaults of `envelope kms serve` (SQLite store, audit log in the data directory,
    # flushed per record), with request logging at warn as an operator's production setting.
    proc = subprocess.Popen(
        [binary, "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off", "--log-level", "warn",
         "--credentials", creds, "--data-dir", os.path.join(tmp.name, "data")],
        stdout=subprocess.DEVNULL)
    wait_port(port, proc, name)
    return Server(name, proc, port, tmp)


def start_moto(binary: str) -> Server:
    port = free_port()
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "moto_server")
    return Server("moto", proc, port)


def start_ceiling(binary: str) -> Server:
    port = free_port()
    proc = subprocess.Popen([binary, f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL)
    wait_port(port, proc, "axum ceiling")
    return Server("axum-ceiling", proc, port)


def prepare_kms(server: Server, ops: list[str]) -> None:
    """A key and a ciphertext on the server, and the JSON body of each operation."""
    kms = boto3.client("kms", endpoint_url=f"http://127.0.0.1:{server.port}", region_name=REGION,
                       aws_access_key_id=AKID, aws_secret_access_key=SECRET)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"0123456789abcdef0123456789abcdef",
                       EncryptionContext={"bench": "wrk"})["CiphertextBlob"]
    import base64
    b64 = base64.b64encode(blob).decode()
    all_bodies = {
        "Decrypt": {"CiphertextBlob": b64, "EncryptionContext": {"bench": "wrk"}},
        "Encrypt": {"KeyId": key, "Plaintext": base64.b64encode(b"0123456789abcdef0123456789abcdef").decode(),
                    "EncryptionContext": {"bench": "wrk"}},
        "GenerateDataKey": {"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": {"bench": "wrk"}},
        "DescribeKey": {"KeyId": key},
    }
    server.bodies = {op: json.dumps(all_bodies[op]) for op in ops}


def signed_headers(port: int, op: str, body: str) -> dict[str, str]:
    req = AWSRequest(method="POST", url=f"http://127.0.0.1:{port}/", data=body.encode(),
                     headers={"Content-Type": "application/x-amz-json-1.1",
                              "X-Amz-Target": f"TrentService.{op}"})
    SigV4Auth(Credentials(AKID, SECRET), "kms", REGION).add_auth(req)
    headers = dict(req.headers.items())
    headers["Host"] = f"127.0.0.1:{port}"
    return headers


def check_once(port: int, headers: dict[str, str], body: str, what: str) -> None:
    """One request with exactly what wrk will replay: it must succeed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/", body=body.encode(), headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status != 200:
        raise SystemExit(f"{what}: the replayed request answers {resp.status}: {data[:300]!r}")


def lua(headers: dict[str, str], body: str) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body}]==]"]
    for k, v in headers.items():
        lines.append(f"wrk.headers[ [==[{k}]==] ] = [==[{v}]==]")
    return "\n".join(lines) + "\n"


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_ms(s: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", s)
    if not m:
        raise ValueError(s)
    return float(m.group(1)) * UNIT[m.group(2)]


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    requests: int


def run_wrk(server: Server, op: str, args, tmpdir: str) -> Sample:
    body = server.bodies.get(op) or json.dumps({"KeyId": "ceiling", "CiphertextBlob": "AAAA"})
    headers = signed_headers(server.port, op, body)
    check_once(server.port, headers, body, f"{server.name} {op}")
    script = os.path.join(tmpdir, f"{server.name}-{op}.lua")
    with open(script, "w") as f:
        f.write(lua(headers, body))
    url = f"http://127.0.0.1:{server.port}/"
    # wrk abandons a response after --timeout and counts a socket error: a slow server (moto on a
    # loaded machine) must be measured, not failed.
    base = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "--timeout", args.timeout, "-s", script]
    subprocess.run(base + ["-d", args.warmup, url], check=True, stdout=subprocess.DEVNULL)
    before = cpu_seconds(server.proc.pid)
    out = subprocess.run(base + ["-d", args.duration, "--latency", url], check=True, capture_output=True,
                         text=True).stdout
    after = cpu_seconds(server.proc.pid)
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"{server.name} {op}: wrk saw failed requests:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = parse_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = parse_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    return Sample(rps, p50, p99, (after - before) / max(requests, 1) * 1e6, requests)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envelope-bin", default="target/release/envelope")
    ap.add_argument("--baseline-bin", help="a second envelope binary measured side by side (e.g. the one before a change)")
    ap.add_argument("--moto", default=".venv/bin/moto_server", help='moto_server, or "off"')
    ap.add_argument("--ceiling", default="target/release/examples/axum_ceiling", help='the trivial handler, or "off"')
    ap.add_argument("--ops", default="Decrypt,Encrypt,GenerateDataKey,DescribeKey")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--warmup", default="2s")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", default="30s", help="wrk's per-request timeout")
    args = ap.parse_args()
    ops = args.ops.split(",")

    starters = [("envelope", lambda: start_envelope("envelope", args.envelope_bin), ops)]
    if args.baseline_bin:
        starters.append(("baseline", lambda: start_envelope("baseline", args.baseline_bin), ops))
    if args.moto != "off":
        starters.append(("moto", lambda: start_moto(args.moto), ["Decrypt"]))
    if args.ceiling != "off":
        starters.append(("axum-ceiling", lambda: start_ceiling(args.ceiling), ["Decrypt"]))

    results: dict[tuple[str, str], list[Sample]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for run in range(args.runs):
            order = starters[run % len(starters):] + starters[:run % len(starters)]
            for name, start, server_ops in order:
                server = start()
                try:
                    if name != "axum-ceiling":
                        prepare_kms(server, server_ops)
                    for op in server_ops:
                        s = run_wrk(server, op, args, tmpdir)
                        results.setdefault((name, op), []).append(s)
                        print(f"run {run + 1} {name:13} {op:16} {s.rps:10.0f} req/s  p50 {s.p50_ms:6.2f} ms  "
                              f"p99 {s.p99_ms:6.2f} ms  cpu {s.cpu_us:7.1f} µs/req", file=sys.stderr, flush=True)
                finally:
                    server.stop()

    med = {k: Sample(*(statistics.median(getattr(s, f) for s in v)
                       for f in ("rps", "p50_ms", "p99_ms", "cpu_us", "requests"))) for k, v in results.items()}
    print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration} --timeout {args.timeout}, {args.runs} runs, medians "
          f"(range of req/s in brackets)\n")
    print("| server | operation | req/s | p50 ms | p99 ms | server CPU µs/req |")
    print("|---|---|---:|---:|---:|---:|")
    for (name, op), m in med.items():
        rs = [s.rps for s in results[(name, op)]]
        print(f"| {name} | {op} | {m.rps:,.0f} [{min(rs):,.0f}–{max(rs):,.0f}] | {m.p50_ms:.2f} | "
              f"{m.p99_ms:.2f} | {m.cpu_us:.1f} |")
    env = med.get(("envelope", "Decrypt"))
    if env:
        print()
        for other in ("moto", "axum-ceiling", "baseline"):
            o = med.get((other, "Decrypt"))
            if o:
                print(f"Decrypt throughput envelope / {other}: {env.rps / o.rps:.2f}×; "
                      f"server CPU per request envelope / {other}: {env.cpu_us / o.cpu_us:.2f}×")
        base = [(op, med[("baseline", op)]) for op in ops if ("baseline", op) in med]
        for op, b in base:
            e = med[("envelope", op)]
            print(f"{op}: envelope / baseline req/s {e.rps / b.rps:.2f}×, CPU/req {e.cpu_us / b.cpu_us:.2f}×")


if __name__ == "__main__":
    main()
