"""The plugin out of file descriptors: it backs off instead of spinning on the listener, and serves
again as soon as descriptors are free."""

import os
import resource
import signal
import socket
import subprocess
import tempfile
import time

import grpc

from harness import envelope_bin, wait_for

NOFILE = 64


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_does_not_spin_and_recovers(stubs):
    d = tempfile.mkdtemp(prefix="envelope-nofile-")
    sock = os.path.join(d, "kms.sock")
    p = subprocess.Popen([envelope_bin(), "plugin", "--socket", sock, "--data-dir", os.path.join(d, "data"),
                          "--http-addr", "off", "--log-level", "error"],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "plugin.err"), "w"),
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE)))
    clients = []
    try:
        wait_for(lambda: os.path.exists(sock), 30, "the plugin's socket")
        # More connections than the plugin has descriptors: the rest stay in the listen backlog.
        for _ in range(3 * NOFILE):
            c = socket.socket(socket.AF_UNIX)
            c.connect(sock)
            clients.append(c)
        time.sleep(1)
        before, t0 = _cpu_seconds(p.pid), time.time()
        time.sleep(3)
        used, wall = _cpu_seconds(p.pid) - before, time.time() - t0
        # A loop retrying accept() on EMFILE burns a whole core; backing off uses next to nothing.
        assert used < 0.25 * wall, f"{used:.2f} CPU-s in {wall:.1f} s while out of descriptors"
        assert p.poll() is None
        for c in clients:
            c.close()
        clients.clear()
        v2, v2g = stubs["v2"], stubs["v2_grpc"]

        def status_ok():
            with grpc.insecure_channel(f"unix://{sock}") as ch:
                return v2g.KeyManagementServiceStub(ch).Status(v2.StatusRequest(), timeout=3).healthz == "ok"

        wait_for(status_ok, 30, "Status once descriptors are free")
    finally:
        for c in clients:
            c.close()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0


def test_sighup_does_not_stop_the_plugin(stubs):
    d = tempfile.mkdtemp(prefix="envelope-hup-")
    sock = os.path.join(d, "kms.sock")
    p = subprocess.Popen([envelope_bin(), "plugin", "--socket", sock, "--data-dir", os.path.join(d, "data"),
                          "--http-addr", "off"], stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "plugin.err"), "w"))
    try:
        wait_for(lambda: os.path.exists(sock), 30, "the plugin's socket")
        v2, v2g = stubs["v2"], stubs["v2_grpc"]
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            stub = v2g.KeyManagementServiceStub(ch)
            assert stub.Status(v2.StatusRequest(), timeout=3).healthz == "ok"
            p.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            assert p.poll() is None, "SIGHUP stopped the plugin"
            assert stub.Status(v2.StatusRequest(), timeout=3).healthz == "ok", "the open connection still serves"
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
