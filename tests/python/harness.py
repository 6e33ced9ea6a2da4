"""What every Python test shares: the `envelope` binary under test, free loopback ports, and
waiting for a condition with a deadline.
"""

import os
import pathlib
import socket
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def envelope_bin():
    """The binary under test: $ENVELOPE_BIN, else target/debug/envelope."""
    b = os.environ.get("ENVELOPE_BIN") or str(ROOT / "target" / "debug" / "envelope")
    assert os.path.exists(b), f"build the binary first: {b}"
    return b


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, what, interval=0.25):
    """Calls pred until it returns something truthy; fails with the last exception after timeout."""
    end, last = time.time() + timeout, None
    while True:
        try:
            r = pred()
            if r:
                return r
        except Exception as e:  # noqa: BLE001 — reported below
            last = e
        if time.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last!r}")
        time.sleep(interval)


def wait_listening(p, port, timeout=20, log=None):
    """Waits until something accepts connections on 127.0.0.1:port. Fails at once if process p
    exits first (showing the file log, else its piped stderr), or after timeout seconds."""
    end = time.time() + timeout
    while True:
        assert p.poll() is None, _exit_report(p, log)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert time.time() < end, f"nothing listening on 127.0.0.1:{port} after {timeout}s"
            time.sleep(0.05)


def _exit_report(p, log):
    if log:
        with open(log, errors="replace") as f:
            return f.read()
    if p.stderr:
        return p.stderr.read().decode(errors="replace")
    return f"exited early with status {p.returncode}"
