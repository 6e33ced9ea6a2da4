"""`envelope kms credentials add|list|rotate|remove` against a running `envelope kms serve`,
driven by boto3: every change is picked up without a restart or a signal, expiring keys are
refused with ExpiredTokenException, and the file stays 0600 and never shows a secret in `list`.
"""

import json
import os
import re
import stat
import subprocess
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from harness import envelope_bin, free_port, wait_for, wait_listening

PRINCIPAL = "arn:aws:iam::111122223333:user/ci"


@pytest.fixture
def server(tmp_path):
    """A key server that generated its own credentials file in its data directory."""
    data, port = tmp_path / "data", free_port()
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    p = subprocess.Popen(
        [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off",
         "--data-dir", str(data)],
        stdout=open(out, "w"), stderr=open(err, "w"))
    try:
        wait_listening(p, port, log=str(err))
        exports = wait_for(lambda: (lambda d: d if "AWS_SECRET_ACCESS_KEY" in d else None)(
            dict(re.findall(r"export (AWS_\w+)=(\S+)", out.read_text()))), 10, "the generated access key on stdout")
        yield {"port": port, "data": data, "akid": exports["AWS_ACCESS_KEY_ID"],
               "secret": exports["AWS_SECRET_ACCESS_KEY"], "proc": p}
    finally:
        p.terminate()
        p.wait(timeout=20)


def creds(server, *args, check=True):
    r = subprocess.run([envelope_bin(), "kms", "credentials", "--data-dir", str(server["data"]), *args],
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def new_key(output):
    found = dict(re.findall(r"export (AWS_\w+)=(\S+)", output))
    return found["AWS_ACCESS_KEY_ID"], found["AWS_SECRET_ACCESS_KEY"]


def kms(server, akid, secret):
    return boto3.client("kms", endpoint_url=f"http://127.0.0.1:{server['port']}", region_name="us-east-1",
                        aws_access_key_id=akid, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1}))


def error_code(call):
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def test_added_key_works_at_once_and_list_shows_no_secret(server):
    admin = kms(server, server["akid"], server["secret"])
    akid, secret = new_key(creds(server, "add", "--principal", PRINCIPAL, "--admin").stdout)
    assert akid != server["akid"]
    client = kms(server, akid, secret)
    wait_for(lambda: client.list_keys() is not None, 10, "the new access key to be accepted")
    key = client.create_key()["KeyMetadata"]["KeyId"]
    assert key in [k["KeyId"] for k in admin.list_keys()["Keys"]]

    listing = creds(server, "list").stdout
    assert akid in listing and server["akid"] in listing and PRINCIPAL in listing
    assert secret not in listing and server["secret"] not in listing
    rows = [json.loads(line) for line in creds(server, "list", "--json").stdout.splitlines()]
    assert {r["AccessKeyId"]: r["Status"] for r in rows} == {server["akid"]: "active", akid: "active"}
    assert all(secret not in json.dumps(r) for r in rows)
    path = server["data"] / "credentials.yaml"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert server["proc"].poll() is None


def test_a_key_limited_by_its_identity_policy(server, tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:ListKeys", "Resource": "*"}]}))
    akid, secret = new_key(creds(server, "add", "--principal", PRINCIPAL, "--policy-file", str(policy)).stdout)
    client = kms(server, akid, secret)
    wait_for(lambda: client.list_keys() is not None, 10, "the new access key to be accepted")
    assert error_code(client.create_key) == "AccessDeniedException"


def test_expiring_key_is_refused_with_expired_token(server):
    akid, secret = new_key(creds(server, "add", "--principal", PRINCIPAL, "--admin", "--expires-in", "4s").stdout)
    client = kms(server, akid, secret)
    wait_for(lambda: client.list_keys() is not None, 10, "the new access key to be accepted")
    wait_for(lambda: error_code(client.list_keys) == "ExpiredTokenException", 15, "the key to expire")
    rows = [json.loads(line) for line in creds(server, "list", "--json").stdout.splitlines()]
    assert {r["AccessKeyId"]: r["Status"] for r in rows}[akid] == "expired"
    # A wrong signature with the expired key still says the signature is wrong (the expiry is
    # told only to whoever holds the secret).
    assert error_code(kms(server, akid, "not-the-secret").list_keys) == "InvalidSignatureException"


def test_rotate_with_and_without_grace_and_remove(server):
    old = kms(server, server["akid"], server["secret"])
    out = creds(server, "rotate", server["akid"], "--grace", "1h").stdout
    akid, secret = new_key(out)
    new = kms(server, akid, secret)
    wait_for(lambda: new.list_keys() is not None, 10, "the rotated access key to be accepted")
    assert old.list_keys() is not None, "the old key keeps working during the grace period"
    # The rotated key has the old one's policy: an administrator.
    assert new.create_key()["KeyMetadata"]["KeyId"]

    akid2, secret2 = new_key(creds(server, "rotate", akid).stdout)
    newer = kms(server, akid2, secret2)
    wait_for(lambda: newer.list_keys() is not None, 10, "the second rotation to be picked up")
    assert error_code(new.list_keys) == "UnrecognizedClientException"

    creds(server, "remove", server["akid"])
    wait_for(lambda: error_code(old.list_keys) == "UnrecognizedClientException", 10, "the removal to be picked up")
    assert newer.list_keys() is not None

    before = (server["data"] / "credentials.yaml").read_bytes()
    r = creds(server, "remove", akid2, check=False)
    assert r.returncode != 0 and "only access key" in r.stderr
    r = creds(server, "remove", "AKIANOSUCHKEY0000000", check=False)
    assert r.returncode != 0 and "no access key" in r.stderr
    assert (server["data"] / "credentials.yaml").read_bytes() == before


def test_a_broken_edit_by_hand_keeps_the_keys_in_use(server):
    client = kms(server, server["akid"], server["secret"])
    path = server["data"] / "credentials.yaml"
    path.write_text("not: [valid")
    time.sleep(2.5)  # two watch intervals: the server has seen the change and refused it
    assert client.list_keys() is not None and server["proc"].poll() is None
    r = creds(server, "list", check=False)
    assert r.returncode != 0 and "credentials file" in r.stderr
