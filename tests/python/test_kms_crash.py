"""`envelope kms serve` killed with SIGKILL under load loses nothing it acknowledged.

Several boto3 clients create keys, tag them, encrypt and generate data keys against a server with
an audit log (fail-closed) while it is killed with `kill -9`. After a restart on the same data
directory, every acknowledged write is there (keys, tags), every acknowledged ciphertext
decrypts, every acknowledged request has its audit records (intent and outcome for state changes,
one record for the others), every line of the audit file is a whole record, and no key exists
without the intent record of the CreateKey that made it.
"""

import json
import os
import pathlib
import signal
import subprocess
import tempfile
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from harness import envelope_bin, free_port, wait_listening

AKID = "AKIAENVELOPECRASH001"
SECRET = "crash-test-secret-0123456789abcdefghijklm"
PRINCIPAL = "arn:aws:iam::111122223333:user/crash"
WORKERS = 8


def _start(tmp, audit):
    creds = os.path.join(tmp, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n  principal: {PRINCIPAL}\n")
    os.chmod(creds, 0o600)
    port, hport = free_port(), free_port()
    err = open(os.path.join(tmp, "stderr.log"), "a")
    p = subprocess.Popen(
        [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", f"127.0.0.1:{hport}",
         "--data-dir", os.path.join(tmp, "data"), "--credentials", creds,
         "--audit-log", audit, "--audit-fail-closed"],
        stdout=subprocess.DEVNULL, stderr=err,
    )
    wait_listening(p, port, timeout=30, log=os.path.join(tmp, "stderr.log"))
    return p, port


def _client(port):
    return boto3.client(
        "kms", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
        aws_access_key_id=AKID, aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )


def _load(port, worker, acked, stop, failures):
    """Runs requests until the server goes away; appends (operation, request id, details) of each
    acknowledged one to `acked`."""
    kms = _client(port)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            r = kms.create_key(Description=f"w{worker}-{n}")
            key = r["KeyMetadata"]["KeyId"]
            acked.append(("CreateKey", r["ResponseMetadata"]["RequestId"], {"key": key}))
            r = kms.tag_resource(KeyId=key, Tags=[{"TagKey": "n", "TagValue": str(n)}])
            acked.append(("TagResource", r["ResponseMetadata"]["RequestId"], {"key": key, "value": str(n)}))
            for i in range(3):
                plaintext = f"secret {worker}/{n}/{i}".encode()
                context = {"worker": str(worker), "i": str(i)}
                r = kms.encrypt(KeyId=key, Plaintext=plaintext, EncryptionContext=context)
                acked.append(("Encrypt", r["ResponseMetadata"]["RequestId"],
                              {"blob": r["CiphertextBlob"], "plaintext": plaintext, "context": context}))
            r = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
            acked.append(("GenerateDataKey", r["ResponseMetadata"]["RequestId"],
                          {"blob": r["CiphertextBlob"], "plaintext": r["Plaintext"], "context": {}}))
    except Exception as e:  # the server was killed: connection refused, reset or closed
        failures.append(e)


def _records(path):
    lines = pathlib.Path(path).read_text().splitlines()
    # Every line is a whole record: a kill never leaves half of one.
    return [json.loads(line) for line in lines]


def test_kill_9_under_load_loses_no_acknowledged_write_or_audit_record():
    with tempfile.TemporaryDirectory() as tmp:
        audit = os.path.join(tmp, "audit.log")
        p, port = _start(tmp, audit)
        acked, failures, stop = [], [], threading.Event()
        threads = [threading.Thread(target=_load, args=(port, w, acked, stop, failures)) for w in range(WORKERS)]
        for t in threads:
            t.start()
        # Under load for a while, then killed while requests are in flight.
        end = time.time() + 30
        while len(acked) < 400 and time.time() < end:
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert len(acked) >= 100, f"too little load before the kill: {len(acked)} requests"
        assert len(failures) == WORKERS, "every client was still sending when the server was killed"
        answered = [e for e in failures if isinstance(e, ClientError)]
        assert not answered, f"the server refused requests under load: {answered}"

        before = _records(audit)
        by_id = {}
        for r in before:
            by_id.setdefault(r["requestID"], []).append(r)
        for op, request_id, _ in acked:
            recs = by_id.get(request_id, [])
            assert recs, f"acknowledged {op} {request_id} has no audit record"
            assert all(r["eventName"] == op and "errorCode" not in r for r in recs), recs
            if op in ("CreateKey", "TagResource"):
                stages = sorted(r["additionalEventData"]["auditStage"] for r in recs)
                assert stages == ["intent", "outcome"], f"{op} {request_id}: {stages}"
            else:
                assert len(recs) == 1 and "additionalEventData" not in recs[0], recs

        # Restarted on the same directory: every acknowledged write is there.
        p, port = _start(tmp, audit)
        try:
            kms = _client(port)
            keys = []
            marker = None
            while True:
                page = kms.list_keys(**({"Marker": marker} if marker else {}))
                keys += [k["KeyId"] for k in page["Keys"]]
                if not page.get("Truncated"):
                    break
                marker = page["NextMarker"]
            # No key without the durable intent record of the CreateKey that made it.
            intents = [r for r in before if r["eventName"] == "CreateKey"
                       and r["additionalEventData"]["auditStage"] == "intent"]
            assert len(keys) <= len(intents), (len(keys), len(intents))
            for op, _, d in acked:
                if op == "CreateKey":
                    assert d["key"] in keys
                    meta = kms.describe_key(KeyId=d["key"])["KeyMetadata"]
                    assert meta["KeyState"] == "Enabled"
                elif op == "TagResource":
                    tags = kms.list_resource_tags(KeyId=d["key"])["Tags"]
                    assert {"TagKey": "n", "TagValue": d["value"]} in tags
                else:
                    out = kms.decrypt(CiphertextBlob=d["blob"], EncryptionContext=d["context"])
                    assert out["Plaintext"] == d["plaintext"]
            # The audit log goes on after the records of before the kill.
            assert len(_records(audit)) > len(before)
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=20) == 0
