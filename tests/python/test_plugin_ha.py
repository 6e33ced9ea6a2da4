"""High availability with the embedded key store: the steps of docs/operations.md ("High
availability"), run against two real plugins ("node A" and "node B", each with its own data
directory) driven over gRPC: copy root.key once, then after a rotation `envelope key export` on the
node that rotated and `envelope key import` on the other, both plugins running throughout."""

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import grpc
import pytest

from harness import envelope_bin

HEALTH_INTERVAL = 0.2  # seconds, the plugins' --health-interval


def envelope(*args, check=True):
    r = subprocess.run([envelope_bin(), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, f"envelope {' '.join(args)} failed:\n{r.stdout}{r.stderr}"
    return r


class Node:
    """One control-plane node: a data directory and a running plugin on its own socket."""

    def __init__(self, base, name):
        self.dir = os.path.join(base, name)
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "kms.sock")
        self.proc = None
        self.log = None
        os.makedirs(self.dir)

    def start(self, *extra):
        self.log = open(os.path.join(self.dir, "stderr.log"), "w")
        self.proc = subprocess.Popen(
            [envelope_bin(), "plugin", "--socket", self.sock, "--data-dir", self.data, "--http-addr", "off",
             "--health-interval", f"{int(HEALTH_INTERVAL * 1000)}ms", *extra],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )
        deadline = time.time() + 20
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None, f"plugin exited early: {self.stderr()}"
            assert time.time() < deadline, "plugin socket did not appear"
            time.sleep(0.05)

    def stderr(self):
        with open(os.path.join(self.dir, "stderr.log")) as f:
            return f.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=20) == 0
        if self.log:
            self.log.close()


@pytest.fixture
def nodes():
    base = tempfile.mkdtemp(prefix="envelope-ha-")
    made = []

    def make(name):
        n = Node(base, name)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()
    shutil.rmtree(base, ignore_errors=True)


def client(stubs, node):
    ch = grpc.insecure_channel(f"unix://{node.sock}", options=[("grpc.default_authority", "localhost")])
    return ch, stubs["v2_grpc"].KeyManagementServiceStub(ch)


def status_key_id(stubs, c):
    st = c.Status(stubs["v2"].StatusRequest(), timeout=3)
    assert st.healthz == "ok", st.healthz
    return st.key_id


def wait_key_id(stubs, c, want, within):
    """Polls Status until it reports `want`; returns how long that took."""
    start = time.time()
    while True:
        got = status_key_id(stubs, c)
        if got == want:
            return time.time() - start
        assert time.time() - start < within, f"Status still reports {got}, expected {want}"
        time.sleep(0.02)


def wait_key_id_change(stubs, c, old, within=10):
    deadline = time.time() + within
    while True:
        got = status_key_id(stubs, c)
        if got != old:
            return got
        assert time.time() < deadline, "the rotation was not noticed"
        time.sleep(0.02)


def encrypt(stubs, c, plaintext, uid):
    return c.Encrypt(stubs["v2"].EncryptRequest(plaintext=plaintext, uid=uid), timeout=3)


def decrypt(stubs, c, e, uid):
    req = stubs["v2"].DecryptRequest(ciphertext=e.ciphertext, uid=uid, key_id=e.key_id,
                                     annotations=dict(e.annotations))
    return c.Decrypt(req, timeout=3).plaintext


def copy_root_key_once(a, b):
    """docs/operations.md: install -d -m 0700 DIR; install -m 0600 root.key DIR/root.key"""
    subprocess.run(["install", "-d", "-m", "0700", b.data], check=True)
    subprocess.run(["install", "-m", "0600", os.path.join(a.data, "root.key"), os.path.join(b.data, "root.key")],
                   check=True)


def export_import(a, b, export_file):
    """The documented step after every create/rotate: export on A (running), copy, import on B
    (running). Returns import's output."""
    out = envelope("key", "export", "--data-dir", a.data, "--out", export_file, "--force").stdout
    assert "exported" in out
    assert stat.S_IMODE(os.stat(export_file).st_mode) == 0o600
    copied = os.path.join(b.dir, "envelope-keys.export")
    shutil.copyfile(export_file, copied)
    return envelope("key", "import", "--data-dir", b.data, "--from", copied).stdout


def test_a_rotation_on_one_node_reaches_the_other_running_node(stubs, nodes):
    a, b = nodes("a"), nodes("b")
    # Node A: the first plugin creates the data directory, root.key and the key.
    a.start()
    cha, ca = client(stubs, a)
    k1 = status_key_id(stubs, ca)
    before = encrypt(stubs, ca, b"\x01" * 32, "a-before")

    # Node B, once: root.key over a secure channel, then the keys, then its plugin.
    copy_root_key_once(a, b)
    export_file = os.path.join(a.dir, "envelope-keys.export")
    out = export_import(a, b, export_file)
    assert "added 1 key(s), 1 version(s), 1 alias(es)" in out, out
    b.start("--no-create-key")
    chb, cb = client(stubs, b)
    assert status_key_id(stubs, cb) == k1
    assert decrypt(stubs, cb, before, "b-old") == b"\x01" * 32
    from_b = encrypt(stubs, cb, b"\x02" * 32, "b-before")

    # A rotates while both plugins run.
    envelope("key", "rotate", "kubernetes", "--data-dir", a.data)
    k2 = wait_key_id_change(stubs, ca, k1)
    after = encrypt(stubs, ca, b"\x03" * 32, "a-after")
    assert after.key_id == k2
    # B has not received the rotation: it still reports k1 and cannot unwrap what A wraps now.
    assert status_key_id(stubs, cb) == k1
    with pytest.raises(grpc.RpcError):
        decrypt(stubs, cb, after, "b-too-early")

    # The documented fix: export on A (running), copy, import on B (running).
    out = export_import(a, b, export_file)
    assert "added 0 key(s), 1 version(s), 0 alias(es)" in out, out
    assert "current version 1 -> 2" in out and k2 in out, out
    # B's health loop picks up the new key_id within its interval (plus scheduling slack).
    took = wait_key_id(stubs, cb, k2, within=HEALTH_INTERVAL + 5)
    assert took < HEALTH_INTERVAL + 5
    assert decrypt(stubs, cb, after, "b-new") == b"\x03" * 32
    assert decrypt(stubs, cb, before, "b-old-again") == b"\x01" * 32
    b_now = encrypt(stubs, cb, b"\x04" * 32, "b-after")
    assert b_now.key_id == k2
    assert decrypt(stubs, ca, b_now, "a-from-b") == b"\x04" * 32
    assert decrypt(stubs, ca, from_b, "a-from-b-old") == b"\x02" * 32

    # Importing the same file again changes nothing and says so.
    again = envelope("key", "import", "--data-dir", b.data, "--from", os.path.join(b.dir, "envelope-keys.export"))
    assert "nothing to import" in again.stdout, again.stdout
    # Both stores now list the same key, versions and key_id.
    la = json.loads(envelope("key", "list", "-o", "json", "--data-dir", a.data).stdout)
    lb = json.loads(envelope("key", "list", "-o", "json", "--data-dir", b.data).stdout)
    assert [(k["key_id"], k["versions"], k["kms_key_id"]) for k in la] == \
        [(k["key_id"], k["versions"], k["kms_key_id"]) for k in lb]
    assert lb[0]["kms_key_id"] == k2
    # Export never overwrites a file unless --force.
    r = envelope("key", "export", "--data-dir", a.data, "--out", export_file, check=False)
    assert r.returncode != 0 and "--force" in r.stderr, r.stderr
    cha.close()
    chb.close()
    a.stop()
    b.stop()


def test_copying_the_database_while_the_plugin_runs_loses_the_rotation(stubs, nodes):
    """The old advice ("copy the data directory"): what is only in keystore.db-wal is not in a copy
    of keystore.db, so the copy lacks the new version."""
    a = nodes("a")
    a.start()
    ch, ca = client(stubs, a)
    k1 = status_key_id(stubs, ca)
    envelope("key", "rotate", "kubernetes", "--data-dir", a.data)
    k2 = wait_key_id_change(stubs, ca, k1)
    copy = os.path.join(a.dir, "copy")
    subprocess.run(["install", "-d", "-m", "0700", copy], check=True)
    subprocess.run(["install", "-m", "0600", os.path.join(a.data, "root.key"), copy], check=True)
    shutil.copyfile(os.path.join(a.data, "keystore.db"), os.path.join(copy, "keystore.db"))
    copied = json.loads(envelope("key", "list", "-o", "json", "--data-dir", copy).stdout)
    assert k2 not in [k["kms_key_id"] for k in copied], "the copy unexpectedly has the rotation"
    # An export taken at the same moment has it.
    export_file = os.path.join(a.dir, "keys.export")
    envelope("key", "export", "--data-dir", a.data, "--out", export_file)
    fresh = os.path.join(a.dir, "fresh")
    subprocess.run(["install", "-d", "-m", "0700", fresh], check=True)
    subprocess.run(["install", "-m", "0600", os.path.join(a.data, "root.key"), fresh], check=True)
    envelope("key", "import", "--data-dir", fresh, "--from", export_file)
    imported = json.loads(envelope("key", "list", "-o", "json", "--data-dir", fresh).stdout)
    assert [k["kms_key_id"] for k in imported] == [k2]
    ch.close()
    a.stop()


def test_import_refuses_a_store_with_another_root_key_and_a_missing_one(stubs, nodes):
    a, c = nodes("a"), nodes("c")
    a.start()
    c.start()  # its own root.key and its own key
    ch, cc = client(stubs, c)
    kc = status_key_id(stubs, cc)
    export_file = os.path.join(a.dir, "keys.export")
    envelope("key", "export", "--data-dir", a.data, "--out", export_file)
    r = envelope("key", "import", "--data-dir", c.data, "--from", export_file, check=False)
    assert r.returncode == 1
    assert "different root key" in r.stderr and "root.key" in r.stderr, r.stderr
    assert "panicked" not in r.stderr
    assert status_key_id(stubs, cc) == kc
    # A node that has not received root.key yet is told to copy it first.
    empty = os.path.join(a.dir, "empty")
    r = envelope("key", "import", "--data-dir", empty, "--from", export_file, check=False)
    assert r.returncode == 1 and "copy root.key" in r.stderr, r.stderr
    # Damaged files are errors, not panics.
    data = open(export_file, "rb").read()
    for name, content in [("truncated", data[: len(data) // 2]), ("random", os.urandom(4096)), ("empty", b"")]:
        p = os.path.join(a.dir, name)
        with open(p, "wb") as f:
            f.write(content)
        r = envelope("key", "import", "--data-dir", a.data, "--from", p, check=False)
        assert r.returncode == 1 and "panicked" not in r.stderr, (name, r.stderr)
        assert "not a key export" in r.stderr, (name, r.stderr)
    ch.close()
