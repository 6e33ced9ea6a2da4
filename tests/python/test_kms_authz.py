"""Attacks on `envelope kms serve`'s authorization, with boto3 and with raw signed requests.

* The alias hijack: a principal with no rights on a key moves that key's alias to its own key.
* Identity policies in the credentials file (YAML mapping form) decide account-level operations.
* A request signed over `host;x-amz-date` only, replayed with another X-Amz-Target.
* A credentials file that group or others can read is refused at start.
* With --audit-fail-closed and the audit log on a full tmpfs, no state-changing operation changes
  anything.
"""

import datetime
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from harness import envelope_bin, free_port, wait_listening
from test_kms_server import ACCOUNT, REGION

ADMIN_AKID, ADMIN_SECRET = "AKIAENVELOPEAUTHZ001", "authz-admin-secret-0123456789abcdefghijk"
MALLORY_AKID, MALLORY_SECRET = "AKIAENVELOPEAUTHZ002", "authz-mallory-secret-0123456789abcdefghi"
LIMITED_AKID, LIMITED_SECRET = "AKIAENVELOPEAUTHZ003", "authz-limited-secret-0123456789abcdefghi"
ADMIN = f"arn:aws:iam::{ACCOUNT}:user/admin"
MALLORY = f"arn:aws:iam::{ACCOUNT}:user/mallory"
LIMITED = f"arn:aws:iam::{ACCOUNT}:user/limited"

CREDENTIALS = f"""
- access_key_id: {ADMIN_AKID}
  secret_access_key: '{ADMIN_SECRET}'
  principal: {ADMIN}
  policy: '{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"kms:*","Resource":"*"}}]}}'
# No policy: unrestricted inside the account (as every credential was before identity policies).
- access_key_id: {MALLORY_AKID}
  secret_access_key: '{MALLORY_SECRET}'
  principal: {MALLORY}
- access_key_id: {LIMITED_AKID}
  secret_access_key: '{LIMITED_SECRET}'
  principal: {LIMITED}
  policy:
    Version: "2012-10-17"
    Statement:
      - Effect: Allow
        Action: [kms:Encrypt, kms:Decrypt, kms:DescribeKey]
        Resource: "arn:aws:kms:{REGION}:{ACCOUNT}:key/*"
"""


def _start(d, extra=(), creds_mode=0o600):
    creds = os.path.join(d, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(CREDENTIALS)
    os.chmod(creds, creds_mode)
    port = free_port()
    p = subprocess.Popen(
        [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off",
         "--data-dir", os.path.join(d, "data"), "--credentials", creds, *extra],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "stderr.log"), "w"),
    )
    wait_listening(p, port)
    return p, f"http://127.0.0.1:{port}"


def _stop(p):
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0


@pytest.fixture(scope="module")
def server():
    d = tempfile.mkdtemp(prefix="envelope-authz-")
    p, url = _start(d)
    yield url
    _stop(p)
    shutil.rmtree(d, ignore_errors=True)


def _client(url, akid, secret):
    return boto3.client("kms", endpoint_url=url, region_name=REGION, aws_access_key_id=akid,
                        aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))


def _code(e):
    return e.value.response["Error"]["Code"]


def test_alias_hijack_with_boto3(server):
    admin = _client(server, ADMIN_AKID, ADMIN_SECRET)
    mallory = _client(server, MALLORY_AKID, MALLORY_SECRET)
    only_admin = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]})
    victim = admin.create_key(Policy=only_admin)["KeyMetadata"]
    admin.create_alias(AliasName="alias/victim-boto3", TargetKeyId=victim["KeyId"])
    own = mallory.create_key(Description="mallory's")["KeyMetadata"]

    with pytest.raises(ClientError) as e:
        mallory.update_alias(AliasName="alias/victim-boto3", TargetKeyId=own["KeyId"])
    assert _code(e) == "AccessDeniedException"
    assert f"kms:UpdateAlias on resource: {victim['Arn']}" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        mallory.delete_alias(AliasName="alias/victim-boto3")
    assert _code(e) == "AccessDeniedException"

    # The admin keeps encrypting by alias under the victim key; Mallory cannot decrypt.
    ct = admin.encrypt(KeyId="alias/victim-boto3", Plaintext=b"dek seed")
    assert ct["KeyId"] == victim["Arn"]
    with pytest.raises(ClientError) as e:
        mallory.decrypt(CiphertextBlob=ct["CiphertextBlob"])
    assert _code(e) == "AccessDeniedException"
    assert admin.decrypt(CiphertextBlob=ct["CiphertextBlob"])["Plaintext"] == b"dek seed"


def _raw(url, akid, secret, target, body, signed=("content-type", "host", "x-amz-date", "x-amz-target"), send_target=None):
    """A SigV4 request built by hand, signed over exactly the `signed` headers."""
    host = url.split("//", 1)[1]
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"content-type": "application/x-amz-json-1.1", "host": host, "x-amz-date": amz_date, "x-amz-target": target}
    names = sorted(signed)
    canonical = "\n".join(["POST", "/", "", *[f"{n}:{headers[n]}" for n in names], "", ";".join(names),
                           hashlib.sha256(body).hexdigest()])
    scope = f"{day}/{REGION}/kms/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, REGION, "kms", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={akid}/{scope}, SignedHeaders={';'.join(names)}, Signature={sig}"
    if send_target:
        headers["x-amz-target"] = send_target
    req = urllib.request.Request(url + "/", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_alias_hijack_with_raw_requests(server):
    def call(akid, secret, op, body):
        return _raw(server, akid, secret, f"TrentService.{op}", json.dumps(body).encode())

    only_admin = json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]})
    status, victim = call(ADMIN_AKID, ADMIN_SECRET, "CreateKey", {"Policy": only_admin})
    assert status == 200, victim
    victim = victim["KeyMetadata"]
    assert call(ADMIN_AKID, ADMIN_SECRET, "CreateAlias", {"AliasName": "alias/victim-raw", "TargetKeyId": victim["KeyId"]})[0] == 200
    status, own = call(MALLORY_AKID, MALLORY_SECRET, "CreateKey", {})
    assert status == 200
    status, body = call(MALLORY_AKID, MALLORY_SECRET, "UpdateAlias", {"AliasName": "alias/victim-raw", "TargetKeyId": own["KeyMetadata"]["KeyId"]})
    assert (status, body["__type"]) == (400, "AccessDeniedException"), body
    status, aliases = call(ADMIN_AKID, ADMIN_SECRET, "ListAliases", {})
    target = [a["TargetKeyId"] for a in aliases["Aliases"] if a["AliasName"] == "alias/victim-raw"]
    assert target == [victim["KeyId"]]


def test_a_target_outside_the_signature_cannot_be_swapped(server):
    admin = _client(server, ADMIN_AKID, ADMIN_SECRET)
    key = admin.create_key()["KeyMetadata"]
    body = json.dumps({"KeyId": key["KeyId"]}).encode()
    # Properly signed, the raw request works (the signer above is right).
    assert _raw(server, ADMIN_AKID, ADMIN_SECRET, "TrentService.DescribeKey", body)[0] == 200
    # Signed over host and x-amz-date only, with the target changed to DisableKey in transit.
    status, err = _raw(server, ADMIN_AKID, ADMIN_SECRET, "TrentService.DescribeKey", body,
                       signed=("host", "x-amz-date"), send_target="TrentService.DisableKey")
    assert (status, err["__type"]) == (400, "IncompleteSignatureException"), err
    assert admin.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"


def test_identity_policy_from_a_yaml_mapping(server):
    admin = _client(server, ADMIN_AKID, ADMIN_SECRET)
    limited = _client(server, LIMITED_AKID, LIMITED_SECRET)
    key = admin.create_key()["KeyMetadata"]
    ct = limited.encrypt(KeyId=key["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    assert limited.decrypt(CiphertextBlob=ct)["Plaintext"] == b"x"
    for call in (lambda: limited.create_key(), lambda: limited.list_keys(), lambda: limited.disable_key(KeyId=key["KeyId"]),
                 lambda: limited.generate_random(NumberOfBytes=8)):
        with pytest.raises(ClientError) as e:
            call()
        assert _code(e) == "AccessDeniedException"
        assert "identity-based policy" in e.value.response["Error"]["Message"]


def test_a_readable_credentials_file_is_refused(tmp_path):
    creds = tmp_path / "credentials.yaml"
    creds.write_text(CREDENTIALS)
    for mode in (0o644, 0o640, 0o604):
        os.chmod(creds, mode)
        r = subprocess.run([envelope_bin(), "kms", "serve", "--listen", "127.0.0.1:0", "--http-addr", "off",
                            "--data-dir", str(tmp_path / "data"), "--credentials", str(creds)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 64, (mode, r.stderr)
        assert "chmod 600" in r.stderr, r.stderr


# Each state-changing operation with a request that would succeed, in an order where each does.
def _state_changes(c):
    k = c.create_key()["KeyMetadata"]["KeyId"]
    k2 = c.create_key()["KeyMetadata"]["KeyId"]
    c.create_alias(AliasName="alias/a", TargetKeyId=k)
    pending = c.create_key()["KeyMetadata"]["KeyId"]
    c.schedule_key_deletion(KeyId=pending, PendingWindowInDays=7)
    disabled = c.create_key()["KeyMetadata"]["KeyId"]
    c.disable_key(KeyId=disabled)
    rotating = c.create_key()["KeyMetadata"]["KeyId"]
    c.enable_key_rotation(KeyId=rotating)
    c.tag_resource(KeyId=k2, Tags=[{"TagKey": "team", "TagValue": "a"}])
    imported = c.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    from test_kms_server import _wrap
    params = c.get_parameters_for_import(KeyId=imported, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    c.import_key_material(KeyId=imported, ImportToken=params["ImportToken"], ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
                          EncryptedKeyMaterial=_wrap(params["PublicKey"], "RSAES_OAEP_SHA_256", os.urandom(32)))
    external = c.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    params = c.get_parameters_for_import(KeyId=external, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    wrapped = _wrap(params["PublicKey"], "RSAES_OAEP_SHA_256", os.urandom(32))
    policy = json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]})
    return [
        ("create_key", {"Description": "new"}),
        ("create_alias", {"AliasName": "alias/new", "TargetKeyId": k}),
        ("update_alias", {"AliasName": "alias/a", "TargetKeyId": k2}),
        ("delete_alias", {"AliasName": "alias/a"}),
        ("cancel_key_deletion", {"KeyId": pending}),
        ("update_key_description", {"KeyId": k, "Description": "changed"}),
        ("enable_key", {"KeyId": disabled}),
        ("enable_key_rotation", {"KeyId": k}),
        ("disable_key_rotation", {"KeyId": rotating}),
        ("rotate_key_on_demand", {"KeyId": k}),
        ("import_key_material", {"KeyId": external, "ImportToken": params["ImportToken"], "EncryptedKeyMaterial": wrapped,
                                 "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}),
        ("delete_imported_key_material", {"KeyId": imported}),
        ("tag_resource", {"KeyId": k, "Tags": [{"TagKey": "x", "TagValue": "y"}]}),
        ("untag_resource", {"KeyId": k2, "TagKeys": ["team"]}),
        ("put_key_policy", {"KeyId": k, "PolicyName": "default", "Policy": policy}),
        ("disable_key", {"KeyId": k}),
        ("schedule_key_deletion", {"KeyId": k, "PendingWindowInDays": 7}),
    ]


def _world(c):
    out = []
    for k in c.list_keys()["Keys"]:
        i = k["KeyId"]
        out.append((c.describe_key(KeyId=i)["KeyMetadata"], c.get_key_policy(KeyId=i, PolicyName="default")["Policy"],
                    c.list_resource_tags(KeyId=i)["Tags"], c.get_key_rotation_status(KeyId=i)["KeyRotationEnabled"],
                    [r["KeyMaterialId"] for r in c.list_key_rotations(KeyId=i, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]]))
    return out, c.list_aliases()["Aliases"]


def test_full_tmpfs_audit_log_refuses_every_state_change(tmp_path):
    """The audit log on a tmpfs with no space left, in a private mount namespace of the server."""
    d = str(tmp_path)
    data = os.path.join(d, "data")
    # Set-up and inspection through a server without an audit log, on the same data directory.
    p, url = _start(d, ["--audit-log", "off"])
    c = _client(url, ADMIN_AKID, ADMIN_SECRET)
    try:
        cases = _state_changes(c)
        before = _world(c)
    finally:
        _stop(p)

    port = free_port()
    mnt = os.path.join(d, "audit-fs")
    os.mkdir(mnt)
    script = (
        f"set -e; mount -t tmpfs -o size=64k tmpfs {mnt}; touch {mnt}/audit.log; "
        f"dd if=/dev/zero of={mnt}/filler bs=4k 2>/dev/null || true; "
        f"exec {envelope_bin()} kms serve --listen 127.0.0.1:{port} --http-addr off --data-dir {data} "
        f"--credentials {d}/credentials.yaml --audit-log {mnt}/audit.log --audit-fail-closed"
    )
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.insert(1, "--map-root-user")
    p = subprocess.Popen([*unshare, "sh", "-c", script], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(d, "tmpfs.log"), "w"))
    wait_listening(p, port)
    audited = _client(f"http://127.0.0.1:{port}", ADMIN_AKID, ADMIN_SECRET)
    try:
        for name, args in cases:
            with pytest.raises(ClientError) as e:
                getattr(audited, name)(**args)
            assert _code(e) == "KMSInternalException", name
            assert "audit record could not be written" in e.value.response["Error"]["Message"]
    finally:
        _stop(p)

    p, url = _start(d, ["--audit-log", "off"])
    c = _client(url, ADMIN_AKID, ADMIN_SECRET)
    try:
        assert _world(c) == before, "a state change happened without its audit record"
        # And each request does succeed where the audit log is writable.
        for name, args in cases:
            getattr(c, name)(**args)
    finally:
        _stop(p)
