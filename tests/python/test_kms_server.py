"""`envelope kms serve` against independent clients: the real `aws` CLI (awscli v1) and boto3.

The server binary comes from ENVELOPE_BIN (default target/debug/envelope).
"""

import base64
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from botocore.exceptions import ClientError

from harness import envelope_bin, free_port, wait_listening

AKID = "AKIAENVELOPEPYTEST01"
SECRET = "py-test-secret-0123456789abcdefghijklmnop"
REGION = "us-east-1"
ACCOUNT = "111122223333"
ADMIN = f"arn:aws:iam::{ACCOUNT}:user/admin"
APP_AKID = "AKIAENVELOPEPYAPP001"
APP_SECRET = "py-app-secret-0123456789abcdefghijklmnopq"
APP = f"arn:aws:iam::{ACCOUNT}:user/app"


def _aws_cli():
    exe = pathlib.Path(sys.executable).parent / "aws"
    return str(exe) if exe.exists() else shutil.which("aws")


def _env(akid=AKID, secret=SECRET):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": akid,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    })
    return env


@pytest.fixture(scope="module")
def kms():
    d = tempfile.mkdtemp(prefix="envelope-kms-py-")
    creds = os.path.join(d, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n"
                f"  principal: arn:aws:iam::{ACCOUNT}:user/admin\n"
                f"- access_key_id: {APP_AKID}\n  secret_access_key: '{APP_SECRET}'\n"
                f"  principal: {APP}\n")
    os.chmod(creds, 0o600)
    port = free_port()
    log = open(os.path.join(d, "stderr.log"), "w")
    p = subprocess.Popen(
        [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off", "--data-dir", os.path.join(d, "data"),
         "--credentials", creds, "--region", REGION, "--account-id", ACCOUNT],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    wait_listening(p, port)
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "dir": d}
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0
    log.close()
    shutil.rmtree(d, ignore_errors=True)


def aws(kms, *args, env=None, check=True):
    r = subprocess.run([_aws_cli(), "--endpoint-url", kms["url"], "kms", *args], env=env or _env(),
                       capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def client(kms, secret=SECRET):
    return boto3.client("kms", endpoint_url=kms["url"], region_name=REGION, aws_access_key_id=AKID,
                        aws_secret_access_key=secret)


def new_key(kms):
    return client(kms).create_key(Description="pytest")["KeyMetadata"]


def error_code(exc_info):
    return exc_info.value.response["Error"]["Code"]


def test_walkthrough_with_the_aws_cli(kms):
    arn = aws(kms, "create-key", "--query", "KeyMetadata.Arn", "--output", "text").stdout.strip()
    assert re.fullmatch(rf"arn:aws:kms:{REGION}:{ACCOUNT}:key/[0-9a-f-]{{36}}", arn), arn
    key_id = arn.rsplit("/", 1)[1]
    aws(kms, "create-alias", "--alias-name", "alias/k8s-master-key", "--target-key-id", key_id)
    d = json.loads(aws(kms, "describe-key", "--key-id", "alias/k8s-master-key").stdout)
    meta = d["KeyMetadata"]
    assert meta["KeyId"] == key_id and meta["Arn"] == arn
    assert meta["KeyState"] == "Enabled" and meta["AWSAccountId"] == ACCOUNT
    assert len(meta["CurrentKeyMaterialId"]) == 64
    aliases = json.loads(aws(kms, "list-aliases", "--key-id", key_id).stdout)["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/k8s-master-key"]
    # The CLI follows NextMarker by itself when asked for pages of one.
    new_key(kms)
    keys = json.loads(aws(kms, "list-keys", "--page-size", "1").stdout)["Keys"]
    assert key_id in [k["KeyId"] for k in keys] and len(keys) >= 2


def test_cli_encrypt_decrypt_with_and_without_context(kms, tmp_path):
    key = new_key(kms)
    pt = tmp_path / "pt"
    pt.write_bytes(b"cli plaintext \x00\xff")
    for ctx in ([], ["--encryption-context", "cluster=prod,app=etcd"]):
        b64 = aws(kms, "encrypt", "--key-id", key["Arn"], "--plaintext", f"fileb://{pt}", *ctx,
                  "--query", "CiphertextBlob", "--output", "text").stdout.strip()
        ct = tmp_path / "ct"
        ct.write_bytes(base64.b64decode(b64))
        out = json.loads(aws(kms, "decrypt", "--ciphertext-blob", f"fileb://{ct}", *ctx).stdout)
        assert base64.b64decode(out["Plaintext"]) == pt.read_bytes()
        assert out["KeyId"] == key["Arn"]
        if ctx:
            r = aws(kms, "decrypt", "--ciphertext-blob", f"fileb://{ct}", check=False)
            assert r.returncode != 0 and "InvalidCiphertextException" in r.stderr, r.stderr


def test_boto3_encrypt_decrypt_with_and_without_context(kms):
    c = client(kms)
    key = new_key(kms)
    for ctx in ({}, {"namespace": "default", "name": "db-password"}):
        e = c.encrypt(KeyId=key["KeyId"], Plaintext=b"boto3 secret", EncryptionContext=ctx)
        assert e["KeyId"] == key["Arn"] and e["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
        d = c.decrypt(CiphertextBlob=e["CiphertextBlob"], EncryptionContext=ctx)
        assert d["Plaintext"] == b"boto3 secret" and d["KeyId"] == key["Arn"]
        assert d["KeyMaterialId"] == key["CurrentKeyMaterialId"]
        with pytest.raises(ClientError) as ei:
            c.decrypt(CiphertextBlob=e["CiphertextBlob"], EncryptionContext={"other": "context"})
        assert error_code(ei) == "InvalidCiphertextException"
    other = new_key(kms)
    with pytest.raises(ClientError) as ei:
        c.decrypt(CiphertextBlob=e["CiphertextBlob"], EncryptionContext=ctx, KeyId=other["Arn"])
    assert error_code(ei) == "IncorrectKeyException"
    with pytest.raises(ClientError) as ei:
        c.describe_key(KeyId="alias/does-not-exist")
    assert error_code(ei) == "NotFoundException"


def test_generate_data_key(kms, tmp_path):
    c = client(kms)
    key = new_key(kms)
    g = c.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256", EncryptionContext={"k": "v"})
    assert len(g["Plaintext"]) == 32 and g["KeyId"] == key["Arn"]
    assert c.decrypt(CiphertextBlob=g["CiphertextBlob"], EncryptionContext={"k": "v"})["Plaintext"] == g["Plaintext"]
    w = c.generate_data_key_without_plaintext(KeyId=key["KeyId"], NumberOfBytes=48)
    assert "Plaintext" not in w
    assert len(c.decrypt(CiphertextBlob=w["CiphertextBlob"])["Plaintext"]) == 48
    out = json.loads(aws(kms, "generate-data-key", "--key-id", key["Arn"], "--key-spec", "AES_128").stdout)
    assert len(base64.b64decode(out["Plaintext"])) == 16
    r = json.loads(aws(kms, "generate-random", "--number-of-bytes", "64").stdout)
    assert len(base64.b64decode(r["Plaintext"])) == 64


def test_re_encrypt(kms, tmp_path):
    c = client(kms)
    src, dst = new_key(kms), new_key(kms)
    e = c.encrypt(KeyId=src["KeyId"], Plaintext=b"moving", EncryptionContext={"a": "1"})
    r = c.re_encrypt(CiphertextBlob=e["CiphertextBlob"], SourceEncryptionContext={"a": "1"},
                     DestinationKeyId=dst["Arn"], DestinationEncryptionContext={"b": "2"})
    assert r["SourceKeyId"] == src["Arn"] and r["KeyId"] == dst["Arn"]
    d = c.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"b": "2"})
    assert d["Plaintext"] == b"moving" and d["KeyId"] == dst["Arn"]
    # And through the CLI.
    ct = tmp_path / "ct"
    ct.write_bytes(r["CiphertextBlob"])
    out = json.loads(aws(kms, "re-encrypt", "--ciphertext-blob", f"fileb://{ct}", "--source-encryption-context",
                         "b=2", "--destination-key-id", src["KeyId"]).stdout)
    assert out["KeyId"] == src["Arn"]
    assert c.decrypt(CiphertextBlob=base64.b64decode(out["CiphertextBlob"]))["Plaintext"] == b"moving"


def test_rotate_on_demand_then_decrypt_old_ciphertext(kms):
    c = client(kms)
    key = new_key(kms)
    old = c.encrypt(KeyId=key["KeyId"], Plaintext=b"before rotation")["CiphertextBlob"]
    out = json.loads(aws(kms, "rotate-key-on-demand", "--key-id", key["KeyId"]).stdout)
    assert out["KeyId"] in (key["KeyId"], key["Arn"])
    meta = c.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
    assert meta["CurrentKeyMaterialId"] != key["CurrentKeyMaterialId"]
    d = c.decrypt(CiphertextBlob=old)
    assert d["Plaintext"] == b"before rotation" and d["KeyMaterialId"] == key["CurrentKeyMaterialId"]
    new = c.encrypt(KeyId=key["KeyId"], Plaintext=b"after")["CiphertextBlob"]
    assert c.decrypt(CiphertextBlob=new)["KeyMaterialId"] == meta["CurrentKeyMaterialId"]


def test_disable_key_then_encrypt_fails(kms, tmp_path):
    c = client(kms)
    key = new_key(kms)
    aws(kms, "disable-key", "--key-id", key["KeyId"])
    assert c.describe_key(KeyId=key["Arn"])["KeyMetadata"]["KeyState"] == "Disabled"
    pt = tmp_path / "pt"
    pt.write_bytes(b"x")
    r = aws(kms, "encrypt", "--key-id", key["KeyId"], "--plaintext", f"fileb://{pt}", check=False)
    assert r.returncode != 0 and "DisabledException" in r.stderr, r.stderr
    with pytest.raises(ClientError) as ei:
        c.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    assert error_code(ei) == "DisabledException"
    aws(kms, "enable-key", "--key-id", key["Arn"])
    c.encrypt(KeyId=key["KeyId"], Plaintext=b"x")


def test_wrong_secret_is_a_signature_error(kms):
    r = aws(kms, "list-keys", env=_env(secret="wrong-secret-wrong-secret-wrong-secret-00"), check=False)
    assert r.returncode != 0 and "InvalidSignatureException" in r.stderr, r.stderr
    with pytest.raises(ClientError) as ei:
        client(kms, secret="wrong").list_keys()
    assert error_code(ei) == "InvalidSignatureException"
    r = aws(kms, "list-keys", env=_env(akid="AKIAUNKNOWNKEY000000"), check=False)
    assert r.returncode != 0 and "UnrecognizedClientException" in r.stderr, r.stderr


def _signed_raw(kms, target, body):
    """A request signed by botocore's SigV4 signer, sent with urllib; returns (status, headers, json)."""
    req = botocore.awsrequest.AWSRequest(method="POST", url=kms["url"] + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target})
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(AKID, SECRET), "kms", REGION).add_auth(req)
    prepared = req.prepare()
    r = urllib.request.Request(prepared.url, data=body, method="POST", headers=dict(prepared.headers.items()))
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            return resp.status, resp.headers, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def test_unknown_target_and_malformed_json(kms):
    status, headers, body = _signed_raw(kms, "TrentService.NoSuchThing", b"{}")
    assert status == 400 and body["__type"] == "UnknownOperationException"
    assert headers["Content-Type"] == "application/x-amz-json-1.1"
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-amzn-RequestId"])
    status, _, body = _signed_raw(kms, "TrentService.Encrypt", b"{oops")
    assert status == 400 and body["__type"] == "SerializationException"
    status, _, body = _signed_raw(kms, "TrentService.Encrypt", b'{"KeyId": "alias/k8s-master-key"}')
    assert status == 400 and body["__type"] == "ValidationException"
    status, _, body = _signed_raw(kms, "TrentService.GenerateRandom", b'{"NumberOfBytes": 16}')
    assert status == 200 and len(base64.b64decode(body["Plaintext"])) == 16


def test_generated_credentials_are_printed_once_and_work(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    cmd = [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off", "--data-dir", str(data)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        found = {}
        for line in p.stdout:
            m = re.search(r"export (AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY)=(\S+)", line)
            if m:
                found[m.group(1)] = m.group(2)
            if "listening on" in line:
                break
        assert set(found) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        creds = data / "credentials.yaml"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        assert found["AWS_SECRET_ACCESS_KEY"] in creds.read_text()
        c = boto3.client("kms", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                         aws_access_key_id=found["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=found["AWS_SECRET_ACCESS_KEY"])
        assert len(c.generate_random(NumberOfBytes=8)["Plaintext"]) == 8
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0
    # Second start: the file is reused and nothing secret is printed.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in p.stdout:
            assert "AWS_SECRET_ACCESS_KEY" not in line
            if "listening on" in line:
                break
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0


def test_non_loopback_listen_is_refused(tmp_path):
    r = subprocess.run([envelope_bin(), "kms", "serve", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 64 and "loopback" in r.stderr


def test_a_busy_port_stops_the_start_before_anything_is_created(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for i, flags in enumerate((["--listen", f"127.0.0.1:{free_port()}", "--http-addr", f"127.0.0.1:{port}"],
                                   ["--listen", f"127.0.0.1:{port}", "--http-addr", "off"])):
            data = tmp_path / f"data{i}"
            r = subprocess.run([envelope_bin(), "kms", "serve", *flags, "--data-dir", str(data)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 69, r.stdout + r.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr
            assert "listening on" not in r.stdout and "AWS_SECRET_ACCESS_KEY" not in r.stdout, r.stdout
            assert not (data / "credentials.yaml").exists(), "nothing is created before the ports are bound"


def app_client(kms):
    return boto3.client("kms", endpoint_url=kms["url"], region_name=REGION, aws_access_key_id=APP_AKID,
                        aws_secret_access_key=APP_SECRET)


def test_schedule_key_deletion_window_and_cancel_with_the_cli(kms):
    key_id = new_key(kms)["KeyId"]
    r = aws(kms, "schedule-key-deletion", "--key-id", key_id, "--pending-window-in-days", "6", check=False)
    assert r.returncode != 0 and "ValidationException" in r.stderr, r.stderr
    d = json.loads(aws(kms, "schedule-key-deletion", "--key-id", key_id, "--pending-window-in-days", "7").stdout)
    assert d["KeyState"] == "PendingDeletion" and d["PendingWindowInDays"] == 7 and "DeletionDate" in d
    meta = json.loads(aws(kms, "describe-key", "--key-id", key_id).stdout)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    with pytest.raises(ClientError) as e:
        client(kms).encrypt(KeyId=key_id, Plaintext=b"x")
    assert error_code(e) == "KMSInvalidStateException"
    aws(kms, "cancel-key-deletion", "--key-id", key_id)
    meta = json.loads(aws(kms, "describe-key", "--key-id", key_id).stdout)["KeyMetadata"]
    assert meta["KeyState"] == "Disabled" and meta["Enabled"] is False


def test_tag_untag_list(kms):
    c = client(kms)
    key_id = c.create_key(Tags=[{"TagKey": "env", "TagValue": "prod"}])["KeyMetadata"]["KeyId"]
    aws(kms, "tag-resource", "--key-id", key_id, "--tags", "TagKey=team,TagValue=k8s")
    tags = json.loads(aws(kms, "list-resource-tags", "--key-id", key_id).stdout)["Tags"]
    assert tags == [{"TagKey": "env", "TagValue": "prod"}, {"TagKey": "team", "TagValue": "k8s"}]
    c.untag_resource(KeyId=key_id, TagKeys=["env"])
    assert c.list_resource_tags(KeyId=key_id)["Tags"] == [{"TagKey": "team", "TagValue": "k8s"}]
    with pytest.raises(ClientError) as e:
        c.tag_resource(KeyId=key_id, Tags=[{"TagKey": "aws:reserved", "TagValue": "x"}])
    assert error_code(e) == "TagException"


def test_key_policy_get_put_and_denied_principal(kms, tmp_path):
    c, app = client(kms), app_client(kms)
    key_id = new_key(kms)["KeyId"]
    d = json.loads(aws(kms, "get-key-policy", "--key-id", key_id, "--policy-name", "default").stdout)
    assert f"arn:aws:iam::{ACCOUNT}:root" in d["Policy"]
    assert c.list_key_policies(KeyId=key_id)["PolicyNames"] == ["default"]
    app.describe_key(KeyId=key_id)  # the default policy: any principal of the account
    only_admin = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]}
    f = tmp_path / "policy.json"
    f.write_text(json.dumps(only_admin))
    aws(kms, "put-key-policy", "--key-id", key_id, "--policy-name", "default", "--policy", f"file://{f}")
    assert json.loads(c.get_key_policy(KeyId=key_id)["Policy"]) == only_admin
    with pytest.raises(ClientError) as e:
        app.encrypt(KeyId=key_id, Plaintext=b"x")
    assert error_code(e) == "AccessDeniedException"
    assert f"User: {APP} is not authorized to perform: kms:Encrypt" in e.value.response["Error"]["Message"]
    r = aws(kms, "describe-key", "--key-id", key_id, env=_env(APP_AKID, APP_SECRET), check=False)
    assert r.returncode != 0 and "AccessDeniedException" in r.stderr, r.stderr
    c.encrypt(KeyId=key_id, Plaintext=b"x")
    with pytest.raises(ClientError) as e:
        c.put_key_policy(KeyId=key_id, PolicyName="default", Policy="{not json")
    assert error_code(e) == "MalformedPolicyDocumentException"


def test_policy_lockout_safety_check_with_the_cli_and_boto3(kms, tmp_path):
    c = client(kms)
    key_id = new_key(kms)["KeyId"]
    use_only = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"}]}
    f = tmp_path / "lockout.json"
    f.write_text(json.dumps(use_only))
    r = aws(kms, "put-key-policy", "--key-id", key_id, "--policy-name", "default", "--policy", f"file://{f}", check=False)
    assert r.returncode != 0 and "MalformedPolicyDocumentException" in r.stderr, r.stderr
    assert "will not allow you to update the key policy in the future" in r.stderr
    with pytest.raises(ClientError) as e:
        c.create_key(Policy=json.dumps(use_only))
    assert error_code(e) == "MalformedPolicyDocumentException"
    # The operator insists: the flag bypasses the check, and the admin can no longer change it.
    aws(kms, "put-key-policy", "--key-id", key_id, "--policy-name", "default", "--policy", f"file://{f}",
        "--bypass-policy-lockout-safety-check")
    c.encrypt(KeyId=key_id, Plaintext=b"x")
    with pytest.raises(ClientError) as e:
        c.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(use_only), BypassPolicyLockoutSafetyCheck=True)
    assert error_code(e) == "AccessDeniedException"


def test_explicit_deny_statement(kms):
    c = client(kms)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": APP}, "Action": "kms:Decrypt", "Resource": "*"}]}
    key_id = c.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    blob = app_client(kms).encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(ClientError) as e:
        app_client(kms).decrypt(CiphertextBlob=blob)
    assert error_code(e) == "AccessDeniedException"
    assert "explicit deny" in e.value.response["Error"]["Message"]
    assert c.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"


def test_rotation_status_and_list_key_rotations(kms):
    key_id = new_key(kms)["KeyId"]
    st = json.loads(aws(kms, "get-key-rotation-status", "--key-id", key_id).stdout)
    assert st["KeyRotationEnabled"] is False
    aws(kms, "enable-key-rotation", "--key-id", key_id, "--rotation-period-in-days", "180")
    st = json.loads(aws(kms, "get-key-rotation-status", "--key-id", key_id).stdout)
    assert st["KeyRotationEnabled"] is True and st["RotationPeriodInDays"] == 180 and "NextRotationDate" in st
    aws(kms, "rotate-key-on-demand", "--key-id", key_id)
    rot = json.loads(aws(kms, "list-key-rotations", "--key-id", key_id).stdout)["Rotations"]
    assert len(rot) == 1 and rot[0]["RotationType"] == "ON_DEMAND" and len(rot[0]["KeyMaterialId"]) == 64
    current = client(kms).describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    assert rot[0]["KeyMaterialId"] == current
    allm = client(kms).list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]
    assert len(allm) == 2


# ---- BYOK: importing key material, wrapped by an independent implementation (cryptography) ----

def _wrap(public_der, algorithm, material):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

    public = serialization.load_der_public_key(public_der)
    h = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h, label=None)
    if algorithm.startswith("RSAES_OAEP"):
        return public.encrypt(material, oaep)
    aes = os.urandom(32)
    return public.encrypt(aes, oaep) + aes_key_wrap_with_padding(aes, material)


def test_import_key_material_with_the_aws_cli(kms, tmp_path):
    meta = json.loads(aws(kms, "create-key", "--origin", "EXTERNAL").stdout)["KeyMetadata"]
    key_id = meta["KeyId"]
    assert meta["Origin"] == "EXTERNAL" and meta["KeyState"] == "PendingImport" and meta["Enabled"] is False
    r = aws(kms, "encrypt", "--key-id", key_id, "--plaintext", "fileb:///dev/null", check=False)
    assert r.returncode != 0

    params = json.loads(aws(kms, "get-parameters-for-import", "--key-id", key_id,
                            "--wrapping-algorithm", "RSAES_OAEP_SHA_256", "--wrapping-key-spec", "RSA_2048").stdout)
    assert params["ParametersValidTo"]
    material = os.urandom(32)
    wrapped = _wrap(base64.b64decode(params["PublicKey"]), "RSAES_OAEP_SHA_256", material)
    (tmp_path / "token").write_bytes(base64.b64decode(params["ImportToken"]))
    (tmp_path / "material").write_bytes(wrapped)
    out = json.loads(aws(kms, "import-key-material", "--key-id", key_id,
                         "--import-token", f"fileb://{tmp_path / 'token'}",
                         "--encrypted-key-material", f"fileb://{tmp_path / 'material'}",
                         "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE").stdout)
    assert len(out["KeyMaterialId"]) == 64
    meta = client(kms).describe_key(KeyId=key_id)["KeyMetadata"]
    assert meta["KeyState"] == "Enabled" and meta["CurrentKeyMaterialId"] == out["KeyMaterialId"]

    (tmp_path / "pt").write_bytes(b"bring your own key")
    blob = aws(kms, "encrypt", "--key-id", key_id, "--plaintext", f"fileb://{tmp_path / 'pt'}",
               "--query", "CiphertextBlob", "--output", "text").stdout.strip()
    (tmp_path / "ct").write_bytes(base64.b64decode(blob))
    pt = aws(kms, "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'ct'}",
             "--query", "Plaintext", "--output", "text").stdout.strip()
    assert base64.b64decode(pt) == b"bring your own key"

    # Delete the material, re-import the same material (boto3, another wrapping): old ciphertext decrypts.
    kms_client = client(kms)
    kms_client.delete_imported_key_material(KeyId=key_id)
    assert kms_client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    with pytest.raises(ClientError) as e:
        kms_client.decrypt(CiphertextBlob=base64.b64decode(blob))
    assert error_code(e) == "KMSInvalidStateException"
    p = kms_client.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_256",
                                             WrappingKeySpec="RSA_4096")
    kms_client.import_key_material(KeyId=key_id, ImportToken=p["ImportToken"],
                                   EncryptedKeyMaterial=_wrap(p["PublicKey"], "RSA_AES_KEY_WRAP_SHA_256", material),
                                   ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert kms_client.decrypt(CiphertextBlob=base64.b64decode(blob))["Plaintext"] == b"bring your own key"


def test_import_key_material_errors_with_boto3(kms):
    c = client(kms)
    key_id = c.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    p = c.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_256", WrappingKeySpec="RSA_2048")
    with pytest.raises(ClientError) as e:  # 16 bytes is not SYMMETRIC_DEFAULT material
        c.import_key_material(KeyId=key_id, ImportToken=p["ImportToken"],
                              EncryptedKeyMaterial=_wrap(p["PublicKey"], "RSA_AES_KEY_WRAP_SHA_256", os.urandom(16)),
                              ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert error_code(e) == "IncorrectKeyMaterialException"
    token = bytearray(p["ImportToken"])
    token[len(token) // 2] ^= 1
    with pytest.raises(ClientError) as e:
        c.import_key_material(KeyId=key_id, ImportToken=bytes(token),
                              EncryptedKeyMaterial=_wrap(p["PublicKey"], "RSA_AES_KEY_WRAP_SHA_256", os.urandom(32)),
                              ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert error_code(e) == "InvalidImportTokenException"
    with pytest.raises(ClientError) as e:
        c.get_parameters_for_import(KeyId=new_key(kms)["KeyId"], WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                    WrappingKeySpec="RSA_2048")
    assert error_code(e) == "UnsupportedOperationException"
    with pytest.raises(ClientError) as e:
        c.encrypt(KeyId=new_key(kms)["KeyId"], Plaintext=b"x", EncryptionContext={"envelope:api": "kms-v2"})
    assert error_code(e) == "ValidationException"
