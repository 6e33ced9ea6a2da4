"""Audit log and observability of `envelope kms serve`, driven by boto3 (an independent client).

Every request — successful, failed, unauthenticated — yields one CloudTrail-shaped JSON line;
plaintext and ciphertext never appear in it; with --audit-fail-closed a request whose record
cannot be written is refused.
"""

import base64
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from harness import envelope_bin, free_port, wait_listening

AKID = "AKIAENVELOPEAUDIT001"
SECRET = "audit-test-secret-0123456789abcdefghijklm"
PRINCIPAL = "arn:aws:iam::111122223333:user/auditor"


def _start(tmp, extra, port=None):
    creds = os.path.join(tmp, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n  principal: {PRINCIPAL}\n")
    os.chmod(creds, 0o600)
    port, hport = port or free_port(), free_port()
    p = subprocess.Popen(
        [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", f"127.0.0.1:{hport}",
         "--data-dir", os.path.join(tmp, "data"), "--credentials", creds] + extra,
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "stderr.log"), "w"),
    )
    for prt in (port, hport):
        wait_listening(p, prt, log=os.path.join(tmp, "stderr.log"))
    return p, port, hport


def _client(port, secret=SECRET):
    return boto3.client(
        "kms", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
        aws_access_key_id=AKID, aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def _stop(p):
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_one_record_per_request_without_secrets(tmp_path):
    tmp = str(tmp_path)
    p, port, hport = _start(tmp, [])
    try:
        kms = _client(port)
        key = kms.create_key(Description="audited")["KeyMetadata"]
        arn = key["Arn"]
        kms.create_alias(AliasName="alias/audited", TargetKeyId=key["KeyId"])
        secret_plain = b"PLAINTEXT-MUST-NOT-BE-LOGGED-42"
        ct = kms.encrypt(KeyId="alias/audited", Plaintext=secret_plain, EncryptionContext={"tenant": "blue"})["CiphertextBlob"]
        kms.decrypt(CiphertextBlob=ct, EncryptionContext={"tenant": "blue"})
        with pytest.raises(ClientError):
            kms.decrypt(CiphertextBlob=ct, EncryptionContext={"tenant": "red"})
        with pytest.raises(ClientError):
            _client(port, secret="wrong-secret-wrong-secret-wrong-secret-00").list_keys()
        # Health and metrics on the separate loopback port.
        assert urllib.request.urlopen(f"http://127.0.0.1:{hport}/livez", timeout=5).status == 200
        assert urllib.request.urlopen(f"http://127.0.0.1:{hport}/readyz", timeout=5).status == 200
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{hport}/metrics", timeout=5).read().decode()
        assert 'envelope_kms_requests_total{operation="Encrypt",error=""} 1' in metrics, metrics
        assert 'operation="Decrypt",error="InvalidCiphertextException"' in metrics
        assert "envelope_kms_request_duration_seconds_bucket" in metrics
    finally:
        _stop(p)

    recs = _records(os.path.join(tmp, "data", "audit.log"))
    names = [r["eventName"] for r in recs]
    # State changes have an intent record (before) and an outcome record (after); the request
    # that failed authentication is recorded under the operation it named.
    assert names == ["CreateKey", "CreateKey", "CreateAlias", "CreateAlias", "Encrypt", "Decrypt", "Decrypt", "ListKeys"], names
    stages = [r.get("additionalEventData", {}).get("auditStage") for r in recs]
    assert stages == ["intent", "outcome", "intent", "outcome", None, None, None, None], stages
    text = open(os.path.join(tmp, "data", "audit.log")).read()
    assert "PLAINTEXT-MUST-NOT-BE-LOGGED" not in text
    assert base64.b64encode(secret_plain).decode() not in text
    assert base64.b64encode(ct).decode() not in text
    for r in recs:
        assert r["eventSource"] == "kms.amazonaws.com"
        assert r["awsRegion"] == "us-east-1"
        assert r["sourceIPAddress"] == "127.0.0.1"
        assert r["eventTime"].endswith("Z")
        assert r["requestID"] and r["eventID"]
        assert "Boto3" in r["userAgent"] or "botocore" in r["userAgent"]
    create_intent, create, alias_intent, alias, enc, dec, bad, unauth = recs
    assert create_intent["requestID"] == create["requestID"]
    assert create_intent["responseElements"] is None
    assert create["responseElements"]["keyMetadata"]["arn"] == arn
    assert create["readOnly"] is False
    assert create["userIdentity"]["arn"] == PRINCIPAL
    assert create["userIdentity"]["accessKeyId"] == AKID
    assert enc["requestParameters"]["keyId"] == "alias/audited"
    assert enc["requestParameters"]["encryptionContext"] == {"tenant": "blue"}
    assert enc["resources"] == [{"accountId": "111122223333", "type": "AWS::KMS::Key", "ARN": arn}]
    assert enc["responseElements"] is None and enc["readOnly"] is True
    assert dec["requestParameters"]["keyId"] == arn
    assert dec["requestParameters"]["encryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert bad["errorCode"] == "InvalidCiphertextException"
    assert unauth["errorCode"] == "InvalidSignatureException"
    assert unauth["userIdentity"] == {"type": "Unknown", "accessKeyId": AKID}
    assert oct(os.stat(os.path.join(tmp, "data", "audit.log")).st_mode & 0o777) == "0o600"


def test_fail_closed_refuses_requests_it_cannot_record(tmp_path):
    tmp = str(tmp_path)
    # /dev/full accepts the open and fails every write (ENOSPC).
    p, port, _ = _start(tmp, ["--audit-log", "/dev/full", "--audit-fail-closed"])
    try:
        with pytest.raises(ClientError) as e:
            _client(port).list_keys()
        assert e.value.response["Error"]["Code"] == "KMSInternalException"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    finally:
        _stop(p)
    # Without fail-closed the same failure is logged and the request is served.
    p, port, _ = _start(tmp, ["--audit-log", "/dev/full"])
    try:
        assert "Keys" in _client(port).list_keys()
    finally:
        _stop(p)


def test_sighup_reloads_credentials_and_reopens_the_audit_log(tmp_path):
    import http.client

    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials

    tmp = str(tmp_path)
    audit = os.path.join(tmp, "data", "audit.log")
    p, port, _ = _start(tmp, [])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(akid, secret):
        req = botocore.awsrequest.AWSRequest(method="POST", url=f"http://127.0.0.1:{port}/", data=b"{}", headers={
            "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"})
        botocore.auth.SigV4Auth(botocore.credentials.Credentials(akid, secret), "kms", "us-east-1").add_auth(req)
        conn.request("POST", "/", body=b"{}", headers=dict(req.headers.items()))
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")

    new_akid, new_secret = "AKIAENVELOPEAUDIT002", "rotated-secret-0123456789abcdefghijklmnop"
    try:
        assert call(AKID, SECRET)[0] == 200
        sock = conn.sock
        # logrotate moves the audit log away; the credentials file gets a new key, the old one goes.
        os.rename(audit, audit + ".1")
        creds = os.path.join(tmp, "credentials.yaml")
        with open(creds, "w") as f:
            f.write(f"- access_key_id: {new_akid}\n  secret_access_key: '{new_secret}'\n  principal: {PRINCIPAL}\n")
        p.send_signal(signal.SIGHUP)
        end = time.time() + 10
        while call(new_akid, new_secret)[0] != 200:
            assert time.time() < end, "the new access key was not accepted after SIGHUP"
            time.sleep(0.1)
        assert p.poll() is None, "SIGHUP stopped the server"
        status, body = call(AKID, SECRET)
        assert (status, body["__type"]) == (400, "UnrecognizedClientException")
        assert conn.sock is sock, "the keep-alive connection was dropped"
        # A broken file keeps the credentials in use.
        with open(creds, "w") as f:
            f.write("not: [valid")
        p.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert call(new_akid, new_secret)[0] == 200 and p.poll() is None
    finally:
        conn.close()
        _stop(p)
    rotated, fresh = _records(audit + ".1"), _records(audit)
    # Calls refused while the signal was on its way may be in either file; every accepted one is
    # in the file that was live when it was accepted.
    accepted = [r["userIdentity"].get("accessKeyId") for r in rotated if "errorCode" not in r]
    assert accepted == [AKID]
    assert fresh and all(r["eventName"] == "ListKeys" for r in fresh)
    assert fresh[-1]["userIdentity"]["accessKeyId"] == new_akid
