"""Key-server replicas as separate `envelope kms serve` processes on one real PostgreSQL, driven
by boto3 (signed requests, the SDK's own parsing): a replica killed with SIGKILL under write load
loses no write it acknowledged (clients move to another replica), and PostgreSQL stopped under
load makes the replicas unready while cryptography goes on, then ready again once it is back,
without a restart. (The in-process replica tests are in crates/kms-server/tests/replicas.rs.)"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from harness import envelope_bin, free_port, wait_listening

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
from bench_kms_replicas import Postgres  # noqa: E402 — the replica benchmark's throwaway cluster
from bench_kms_wrk import stop_process  # noqa: E402

AKID = "AKIAENVELOPEREPLICA1"
SECRET = "replica-test-secret-0123456789abcdefghij"


class Replica:
    def __init__(self, root, name, creds, store, seed=None):
        self.data = os.path.join(root, name)
        os.makedirs(self.data, mode=0o700, exist_ok=True)
        if seed and not os.path.exists(os.path.join(self.data, "root.key")):
            # Every replica holds the same root key; the database only ever sees sealed material.
            shutil.copy(seed, os.path.join(self.data, "root.key"))
            os.chmod(os.path.join(self.data, "root.key"), 0o600)
        self.port, self.http = free_port(), free_port()
        self.log = os.path.join(root, f"{name}.log")
        self.proc = subprocess.Popen(
            [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--http-addr", f"127.0.0.1:{self.http}", "--credentials", creds, "--data-dir", self.data,
             "--store", store, "--store-refresh", "500ms"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "a"))
        for port in (self.port, self.http):
            wait_listening(self.proc, port, log=self.log)

    def client(self):
        return boto3.client("kms", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
                            aws_access_key_id=AKID, aws_secret_access_key=SECRET,
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def stop(self):
        stop_process(self.proc, timeout=20)


def _eventually(what, pred, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting until {what}")


@pytest.fixture
def cluster(tmp_path):
    creds = str(tmp_path / "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n"
                "  principal: arn:aws:iam::111122223333:user/replicas\n")
    os.chmod(creds, 0o600)
    # The cluster runs as the postgres user, which cannot enter pytest's private temp tree.
    pg_root = tempfile.mkdtemp(prefix="envelope-pg-")
    pg = Postgres(pg_root)
    replicas = []

    def start(name):
        seed = os.path.join(replicas[0].data, "root.key") if replicas else None
        if seed:
            _eventually("the first replica made its root key", lambda: os.path.exists(seed))
        r = Replica(str(tmp_path), name, creds, pg.url, seed)
        replicas.append(r)
        return r

    try:
        yield pg, start
    finally:
        for r in replicas:
            r.stop()
        try:
            pg.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(pg_root, ignore_errors=True)


def test_a_replica_killed_under_signed_load_loses_no_acknowledged_write(cluster):
    pg, start = cluster
    a, b = start("a"), start("b")
    clients = {"a": a.client(), "b": b.client()}
    acked = []            # (key id, tag value) of every write a replica answered with success
    lock = threading.Lock()
    stop = threading.Event()
    moved = []            # writers that failed on a and went on through b

    a_gone = threading.Event()
    errors = []

    def writer(n):
        i = 0
        while not stop.is_set():
            # Round robin between the replicas; once a is gone, b only.
            first = "a" if (n + i) % 2 == 0 and not a_gone.is_set() else "b"
            for name in ([first, "b"] if first == "a" else ["b"]):
                kms = clients[name]
                try:
                    key = kms.create_key(Description=f"writer {n} #{i}")["KeyMetadata"]["KeyId"]
                    kms.tag_resource(KeyId=key, Tags=[{"TagKey": "writer", "TagValue": f"{n}-{i}"}])
                except (BotoCoreError, ClientError) as e:
                    if name == "a" and killed.is_set():
                        # The killed replica (refused or reset): the write is retried on b.
                        a_gone.set()
                        moved.append(n)
                        continue
                    raise AssertionError(f"replica {name} failed a write: {e!r}") from e
                with lock:
                    acked.append((key, f"{n}-{i}"))
                i += 1
                break

    def guarded(n):
        try:
            writer(n)
        except BaseException as e:  # noqa: BLE001 — reported by the assertions below
            errors.append(e)
            stop.set()

    killed = threading.Event()
    threads = [threading.Thread(target=guarded, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    _eventually("both replicas acknowledged writes", lambda: errors or len(acked) >= 20)
    assert not errors, errors
    killed.set()
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    before_kill = len(acked)
    _eventually("writes went on through b", lambda: errors or len(acked) >= before_kill + 20)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert moved, "some writer saw replica a go away"

    # Every acknowledged write is there, read through the surviving replica...
    kms = b.client()
    for key, tag in acked:
        meta = kms.describe_key(KeyId=key)["KeyMetadata"]
        assert meta["KeyState"] == "Enabled"
        tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key)["Tags"]}
        assert tags.get("writer") == tag, (key, tags)
    # ...and through the killed replica, restarted on its data directory.
    a2 = start("a")
    kms = a2.client()
    for key, tag in acked[:: max(1, len(acked) // 20)]:
        tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key)["Tags"]}
        assert tags.get("writer") == tag


def test_postgresql_stopped_under_load_makes_replicas_unready_until_it_is_back(cluster):
    pg, start = cluster
    a, b = start("a"), start("b")
    kms_a, kms_b = a.client(), b.client()
    key = kms_a.create_key()["KeyMetadata"]["KeyId"]
    _eventually("b knows the key", lambda: _known(kms_b, key))
    assert a.ready() == 200 and b.ready() == 200

    stop = threading.Event()
    served, failed = [0], []

    def crypto_load():
        while not stop.is_set():
            for kms in (kms_a, kms_b):
                try:
                    blob = kms.encrypt(KeyId=key, Plaintext=b"kept")["CiphertextBlob"]
                    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"kept"
                    served[0] += 1
                except Exception as e:  # noqa: BLE001 — reported by the test below
                    failed.append(repr(e))

    t = threading.Thread(target=crypto_load, daemon=True)
    t.start()
    try:
        pg.stop()
        _eventually("both replicas say unready", lambda: a.ready() == 503 and b.ready() == 503)
        during = served[0]
        with pytest.raises(ClientError) as refused:
            kms_a.create_key()
        assert refused.value.response["Error"]["Code"] == "KMSInternalException"
        _eventually("cryptography goes on from memory", lambda: served[0] >= during + 10)

        pg.start()
        _eventually("both replicas ready again", lambda: a.ready() == 200 and b.ready() == 200)
        again = kms_a.create_key()["KeyMetadata"]["KeyId"]
        _eventually("b sees a key made after the outage", lambda: _known(kms_b, again))
    finally:
        stop.set()
        t.join(30)
    assert not failed, failed[:3]
    for r in (a, b):
        assert r.proc.poll() is None, "no replica stopped"


def _known(kms, key):
    try:
        kms.describe_key(KeyId=key)
        return True
    except ClientError as e:
        if e.response["Error"]["Code"] != "NotFoundException":
            raise
        return False
