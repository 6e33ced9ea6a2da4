"""Key specs beyond SYMMETRIC_DEFAULT in `envelope kms serve`, against boto3 and the aws CLI:
HMAC keys (HMAC_224/256/384/512, KeyUsage GENERATE_VERIFY_MAC) with GenerateMac and VerifyMac,
and ECDSA signing keys (ECC_NIST_P256/P384/P521, KeyUsage SIGN_VERIFY) with Sign, Verify and
GetPublicKey, their signatures checked by `openssl pkeyutl -verify` with the public key.

The key material is secret, so MACs are not compared with Python's `hmac` module; instead:
one message has one MAC, another message another, VerifyMac accepts it and refuses any change,
every usage, algorithm and state rule answers as AWS does, and the keys keep working (the same
MACs) after a restart of the server.

The server binary comes from ENVELOPE_BIN (default target/debug/envelope).
"""

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from harness import envelope_bin, free_port, wait_listening
from test_kms_server import _aws_cli, _env

AKID = "AKIAENVELOPESPECS001"
SECRET = "specs-test-secret-0123456789abcdefghijkl"
APP_AKID = "AKIAENVELOPESPECS002"
APP_SECRET = "specs-app-secret-0123456789abcdefghijklm"
REGION, ACCOUNT = "us-east-1", "111122223333"
ADMIN = f"arn:aws:iam::{ACCOUNT}:user/admin"
APP = f"arn:aws:iam::{ACCOUNT}:user/app"

# KeySpec → (MacAlgorithm, MAC length in bytes).
HMAC_SPECS = {
    "HMAC_224": ("HMAC_SHA_224", 28),
    "HMAC_256": ("HMAC_SHA_256", 32),
    "HMAC_384": ("HMAC_SHA_384", 48),
    "HMAC_512": ("HMAC_SHA_512", 64),
}


def arn(key_id):
    return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"


class Server:
    """One `envelope kms serve` on a data directory that outlives restarts."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="envelope-kms-specs-")
        self.creds = os.path.join(self.dir, "credentials.yaml")
        with open(self.creds, "w") as f:
            f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n  principal: {ADMIN}\n"
                    f"- access_key_id: {APP_AKID}\n  secret_access_key: '{APP_SECRET}'\n  principal: {APP}\n")
        os.chmod(self.creds, 0o600)
        self.port = free_port()
        self.p = None
        self.start()

    def start(self):
        log = os.path.join(self.dir, "stderr.log")
        self.p = subprocess.Popen(
            [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{self.port}", "--http-addr", "off",
             "--data-dir", os.path.join(self.dir, "data"), "--credentials", self.creds, "--region", REGION,
             "--account-id", ACCOUNT],
            stdout=subprocess.DEVNULL, stderr=open(log, "a"))
        wait_listening(self.p, self.port, log=log)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        assert self.p.wait(timeout=20) == 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def aws(self, *args, check=True):
        """The aws CLI's `kms` commands against this server, as the admin (JSON output)."""
        r = subprocess.run([_aws_cli(), "--endpoint-url", self.url, "--output", "json", "kms", *args],
                           env=_env(AKID, SECRET), capture_output=True, text=True, timeout=60)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def client(self, akid=AKID, secret=SECRET, validate=True):
        cfg = Config(parameter_validation=validate, retries={"max_attempts": 1})
        return boto3.client("kms", endpoint_url=self.url, region_name=REGION, aws_access_key_id=akid,
                            aws_secret_access_key=secret, config=cfg)


@pytest.fixture(scope="module")
def srv():
    s = Server()
    yield s
    s.stop()
    shutil.rmtree(s.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def c(srv):
    return srv.client()


@pytest.fixture(scope="module")
def raw(srv):
    """A client without boto3's parameter validation: requests the model forbids reach the server."""
    return srv.client(validate=False)


def err(call, *args, **kwargs):
    with pytest.raises(ClientError) as e:
        call(*args, **kwargs)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def hmac_key(c, spec="HMAC_256", **kwargs):
    return c.create_key(KeySpec=spec, KeyUsage="GENERATE_VERIFY_MAC", **kwargs)["KeyMetadata"]


def test_each_hmac_spec_makes_and_verifies_macs(c):
    for spec, (alg, length) in HMAC_SPECS.items():
        meta = hmac_key(c, spec, Description=f"mac {spec}")
        assert meta["KeySpec"] == spec and meta["CustomerMasterKeySpec"] == spec
        assert meta["KeyUsage"] == "GENERATE_VERIFY_MAC"
        assert meta["MacAlgorithms"] == [alg]
        assert "EncryptionAlgorithms" not in meta and "SigningAlgorithms" not in meta
        assert (meta["Origin"], meta["KeyState"], meta["Enabled"]) == ("AWS_KMS", "Enabled", True)
        key = meta["KeyId"]
        out = c.generate_mac(KeyId=key, MacAlgorithm=alg, Message=b"the message")
        assert (out["KeyId"], out["MacAlgorithm"]) == (arn(key), alg)
        mac = out["Mac"]
        assert len(mac) == length
        # One message, one MAC; another message, another MAC; another key, another MAC.
        assert c.generate_mac(KeyId=key, MacAlgorithm=alg, Message=b"the message")["Mac"] == mac
        assert c.generate_mac(KeyId=key, MacAlgorithm=alg, Message=b"the messagf")["Mac"] != mac
        other = hmac_key(c, spec)["KeyId"]
        assert c.generate_mac(KeyId=other, MacAlgorithm=alg, Message=b"the message")["Mac"] != mac
        token = c.create_grant(KeyId=key, GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:user/app",
                               Operations=["DescribeKey"])["GrantToken"]
        v = c.verify_mac(KeyId=arn(key), MacAlgorithm=alg, Message=b"the message", Mac=mac, GrantTokens=[token])
        assert (v["KeyId"], v["MacValid"], v["MacAlgorithm"]) == (arn(key), True, alg)
        # Any change of the MAC, the message or the key is refused.
        tampered = bytes([mac[0] ^ 1]) + mac[1:]
        for kwargs in [{"Mac": tampered}, {"Mac": mac[:-1]}, {"Mac": mac + b"\0"},
                       {"Mac": mac, "Message": b"the messagf"}, {"Mac": mac, "KeyId": other}]:
            call = {"KeyId": key, "MacAlgorithm": alg, "Message": b"the message", **kwargs}
            code, _ = err(c.verify_mac, **call)
            assert code == "KMSInvalidMacException", kwargs
        # An algorithm of another spec: InvalidKeyUsageException, for both operations.
        wrong = next(a for a, _ in HMAC_SPECS.values() if a != alg)
        want = ("InvalidKeyUsageException", f"Algorithm {wrong} is incompatible with key spec {spec}.")
        assert err(c.generate_mac, KeyId=key, MacAlgorithm=wrong, Message=b"m") == want
        assert err(c.verify_mac, KeyId=key, MacAlgorithm=wrong, Message=b"the message", Mac=mac) == want


def test_mac_requests_by_alias_dry_run_and_bad_members(c, raw):
    key = hmac_key(c, "HMAC_512")["KeyId"]
    c.create_alias(AliasName="alias/specs-mac", TargetKeyId=key)
    mac = c.generate_mac(KeyId="alias/specs-mac", MacAlgorithm="HMAC_SHA_512", Message=b"x")["Mac"]
    assert c.verify_mac(KeyId=key, MacAlgorithm="HMAC_SHA_512", Message=b"x", Mac=mac)["MacValid"] is True
    code, _ = err(c.generate_mac, KeyId=key, MacAlgorithm="HMAC_SHA_512", Message=b"x", DryRun=True)
    assert code == "DryRunOperationException"
    code, _ = err(c.verify_mac, KeyId=key, MacAlgorithm="HMAC_SHA_512", Message=b"x", Mac=mac, DryRun=True)
    assert code == "DryRunOperationException"
    # DryRun of a MAC that does not verify: the verification fails first.
    code, _ = err(c.verify_mac, KeyId=key, MacAlgorithm="HMAC_SHA_512", Message=b"y", Mac=mac, DryRun=True)
    assert code == "KMSInvalidMacException"
    assert err(raw.generate_mac, KeyId=key, MacAlgorithm="HMAC_SHA_1", Message=b"x") == (
        "ValidationException",
        "1 validation error detected: Value 'HMAC_SHA_1' at 'macAlgorithm' failed to satisfy constraint: Member "
        "must satisfy enum value set: [HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384, HMAC_SHA_512]")
    assert err(raw.generate_mac, KeyId=key, MacAlgorithm="HMAC_SHA_512", Message=b"x" * 4097) == (
        "ValidationException",
        "1 validation error detected: Value at 'message' failed to satisfy constraint: Member must have length "
        "less than or equal to 4096")
    code, msg = err(raw.verify_mac, KeyId=key, MacAlgorithm="HMAC_SHA_512", Message=b"x")
    assert code == "ValidationException" and "'mac'" in msg
    code, msg = err(c.generate_mac, KeyId="alias/specs-none", MacAlgorithm="HMAC_SHA_512", Message=b"x")
    assert code == "NotFoundException"


def test_create_key_spec_and_usage_rules(raw):
    cases = [
        ({"KeySpec": "HMAC_256"}, "ValidationException",
         "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys."),
        ({"KeySpec": "HMAC_256", "KeyUsage": "ENCRYPT_DECRYPT"}, "ValidationException",
         "KeyUsage ENCRYPT_DECRYPT is not compatible with KeySpec HMAC_256"),
        ({"KeySpec": "HMAC_512", "KeyUsage": "SIGN_VERIFY"}, "ValidationException",
         "KeyUsage SIGN_VERIFY is not compatible with KeySpec HMAC_512"),
        ({"KeyUsage": "GENERATE_VERIFY_MAC"}, "ValidationException",
         "KeyUsage GENERATE_VERIFY_MAC is not compatible with KeySpec SYMMETRIC_DEFAULT"),
        ({"KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "GENERATE_VERIFY_MAC"}, "ValidationException",
         "KeyUsage GENERATE_VERIFY_MAC is not compatible with KeySpec SYMMETRIC_DEFAULT"),
        ({"KeySpec": "RSA_2048", "KeyUsage": "GENERATE_VERIFY_MAC"}, "ValidationException",
         "KeyUsage GENERATE_VERIFY_MAC is not compatible with KeySpec RSA_2048"),
        ({"KeySpec": "HMAC_1024", "KeyUsage": "GENERATE_VERIFY_MAC"}, "ValidationException",
         None),
        ({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC", "MultiRegion": True},
         "UnsupportedOperationException", "Multi-Region keys are not supported."),
        ({"KeySpec": "ECC_NIST_P256"}, "ValidationException",
         "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys."),
        ({"KeySpec": "ECC_NIST_P256", "KeyUsage": "ENCRYPT_DECRYPT"}, "ValidationException",
         "KeyUsage ENCRYPT_DECRYPT is not compatible with KeySpec ECC_NIST_P256"),
        ({"KeySpec": "SM2", "KeyUsage": "KEY_AGREEMENT"}, "UnsupportedOperationException",
         "KeySpec SM2 is not supported by this server."),
        ({"KeySpec": "ML_DSA_44", "KeyUsage": "SIGN_VERIFY"}, "UnsupportedOperationException",
         "KeySpec ML_DSA_44 is not supported by this server."),
        ({"KeySpec": "ECC_SECG_P256K1", "KeyUsage": "KEY_AGREEMENT"}, "ValidationException",
         "KeyUsage KEY_AGREEMENT is not compatible with KeySpec ECC_SECG_P256K1"),
        ({"KeySpec": "RSA_3072", "KeyUsage": "KEY_AGREEMENT"}, "ValidationException",
         "KeyUsage KEY_AGREEMENT is not compatible with KeySpec RSA_3072"),
    ]
    for params, code, message in cases:
        got = err(raw.create_key, **params)
        assert got[0] == code, (params, got)
        if message is not None:
            assert got[1] == message, (params, got)
    # CustomerMasterKeySpec (the deprecated name) works the same.
    meta = raw.create_key(CustomerMasterKeySpec="HMAC_224", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    assert (meta["KeySpec"], meta["MacAlgorithms"]) == ("HMAC_224", ["HMAC_SHA_224"])


def test_key_usage_is_enforced_both_ways(c):
    mac_key = hmac_key(c)["KeyId"]
    aes = c.create_key(Description="symmetric")["KeyMetadata"]
    assert aes["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"] and "MacAlgorithms" not in aes
    assert (aes["KeySpec"], aes["KeyUsage"]) == ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
    aes = aes["KeyId"]
    ct = c.encrypt(KeyId=aes, Plaintext=b"secret")["CiphertextBlob"]

    def usage(op, key_usage="GENERATE_VERIFY_MAC", key=mac_key):
        return ("InvalidKeyUsageException", f"{arn(key)} key usage is {key_usage} which is not valid for {op}.")

    assert err(c.encrypt, KeyId=mac_key, Plaintext=b"x") == usage("Encrypt")
    assert err(c.generate_data_key, KeyId=mac_key, KeySpec="AES_256") == usage("GenerateDataKey")
    assert err(c.generate_data_key_without_plaintext, KeyId=mac_key, NumberOfBytes=32) == \
        usage("GenerateDataKeyWithoutPlaintext")
    assert err(c.re_encrypt, CiphertextBlob=ct, DestinationKeyId=mac_key) == usage("ReEncrypt")
    # Decrypt naming the HMAC key: it did not encrypt the ciphertext.
    code, _ = err(c.decrypt, CiphertextBlob=ct, KeyId=mac_key)
    assert code == "IncorrectKeyException"
    # A blob forged to name the HMAC key: its material never serves as an AES key.
    forged = bytes([ct[0]]) + bytes.fromhex(mac_key.replace("-", "")) + ct[17:]
    code, _ = err(c.decrypt, CiphertextBlob=forged)
    assert code in ("InvalidCiphertextException", "InvalidKeyUsageException")
    assert err(c.generate_mac, KeyId=aes, MacAlgorithm="HMAC_SHA_256", Message=b"m") == \
        usage("GenerateMac", "ENCRYPT_DECRYPT", aes)
    assert err(c.verify_mac, KeyId=aes, MacAlgorithm="HMAC_SHA_256", Message=b"m", Mac=b"\0" * 32) == \
        usage("VerifyMac", "ENCRYPT_DECRYPT", aes)
    # The symmetric key still works.
    assert c.decrypt(CiphertextBlob=ct)["Plaintext"] == b"secret"


def test_states_rotation_and_management_of_hmac_keys(c):
    key = hmac_key(c, "HMAC_384", Tags=[{"TagKey": "team", "TagValue": "a"}])["KeyId"]
    m = c.generate_mac(KeyId=key, MacAlgorithm="HMAC_SHA_384", Message=b"m")["Mac"]
    c.disable_key(KeyId=key)
    assert err(c.generate_mac, KeyId=key, MacAlgorithm="HMAC_SHA_384", Message=b"m") == \
        ("DisabledException", f"{arn(key)} is disabled.")
    assert err(c.verify_mac, KeyId=key, MacAlgorithm="HMAC_SHA_384", Message=b"m", Mac=m)[0] == "DisabledException"
    c.enable_key(KeyId=key)
    c.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    code, msg = err(c.generate_mac, KeyId=key, MacAlgorithm="HMAC_SHA_384", Message=b"m")
    assert code == "KMSInvalidStateException" and arn(key) in msg
    assert err(c.verify_mac, KeyId=key, MacAlgorithm="HMAC_SHA_384", Message=b"m", Mac=m)[0] == \
        "KMSInvalidStateException"
    c.cancel_key_deletion(KeyId=key)
    c.enable_key(KeyId=key)
    assert c.verify_mac(KeyId=key, MacAlgorithm="HMAC_SHA_384", Message=b"m", Mac=m)["MacValid"] is True
    # Rotation applies to symmetric encryption keys only; the status of an HMAC key reads false.
    for op in ("enable_key_rotation", "disable_key_rotation", "rotate_key_on_demand"):
        code, msg = err(getattr(c, op), KeyId=key)
        assert code == "UnsupportedOperationException" and arn(key) in msg, (op, msg)
    assert c.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False
    # Lists, tags, aliases, descriptions, policies: as for any key.
    assert key in [k["KeyId"] for k in c.list_keys(Limit=1000)["Keys"]]
    c.tag_resource(KeyId=key, Tags=[{"TagKey": "env", "TagValue": "prod"}])
    c.untag_resource(KeyId=key, TagKeys=["team"])
    assert c.list_resource_tags(KeyId=key)["Tags"] == [{"TagKey": "env", "TagValue": "prod"}]
    c.create_alias(AliasName="alias/specs-managed", TargetKeyId=key)
    assert any(a["AliasName"] == "alias/specs-managed" and a["TargetKeyId"] == key
               for a in c.list_aliases(KeyId=key)["Aliases"])
    c.update_key_description(KeyId=key, Description="renamed")
    d = c.describe_key(KeyId="alias/specs-managed")["KeyMetadata"]
    assert (d["Description"], d["KeySpec"], d["MacAlgorithms"]) == ("renamed", "HMAC_384", ["HMAC_SHA_384"])
    assert "EncryptionAlgorithms" not in d


def test_key_policies_name_the_mac_actions(srv, c):
    key = hmac_key(c)["KeyId"]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "root", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "app verifies only", "Effect": "Deny", "Principal": {"AWS": APP}, "Action": "kms:GenerateMac",
         "Resource": "*"}]}
    c.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
    mac = c.generate_mac(KeyId=key, MacAlgorithm="HMAC_SHA_256", Message=b"m")["Mac"]
    app = srv.client(APP_AKID, APP_SECRET)
    code, msg = err(app.generate_mac, KeyId=key, MacAlgorithm="HMAC_SHA_256", Message=b"m")
    assert code == "AccessDeniedException"
    assert msg.startswith(f"User: {APP} is not authorized to perform: kms:GenerateMac on resource: {arn(key)}")
    assert app.verify_mac(KeyId=key, MacAlgorithm="HMAC_SHA_256", Message=b"m", Mac=mac)["MacValid"] is True


def test_audit_records_show_the_key_and_algorithm_never_the_message(srv, c):
    key = hmac_key(c)["KeyId"]
    secret_message = b"audit-must-not-show-this-message-0123"
    mac = c.generate_mac(KeyId=key, MacAlgorithm="HMAC_SHA_256", Message=secret_message)["Mac"]
    c.verify_mac(KeyId=key, MacAlgorithm="HMAC_SHA_256", Message=secret_message, Mac=mac)
    text = open(os.path.join(srv.dir, "data", "audit.log")).read()
    assert secret_message.decode() not in text
    assert base64.b64encode(secret_message).decode() not in text
    assert base64.b64encode(mac).decode() not in text
    recs = [json.loads(line) for line in text.splitlines() if line.strip()]
    for op in ("GenerateMac", "VerifyMac"):
        r = [r for r in recs if r.get("eventName") == op and r.get("requestParameters", {}).get("keyId") == key][-1]
        assert r["requestParameters"] == {"keyId": key, "macAlgorithm": "HMAC_SHA_256"}
        assert r["readOnly"] is True and r.get("responseElements") is None
        assert r["resources"][0]["ARN"] == arn(key)


def test_aws_cli_creates_hmac_keys_and_makes_and_verifies_macs(srv, tmp_path):
    aws = srv.aws

    meta = json.loads(aws("create-key", "--key-spec", "HMAC_256", "--key-usage", "GENERATE_VERIFY_MAC").stdout)
    meta = meta["KeyMetadata"]
    assert (meta["KeySpec"], meta["MacAlgorithms"]) == ("HMAC_256", ["HMAC_SHA_256"])
    msg = tmp_path / "message"
    msg.write_bytes(b"signed by the cli")
    out = json.loads(aws("generate-mac", "--key-id", meta["KeyId"], "--mac-algorithm", "HMAC_SHA_256",
                         "--message", f"fileb://{msg}").stdout)
    mac = base64.b64decode(out["Mac"])
    assert len(mac) == 32 and out["MacAlgorithm"] == "HMAC_SHA_256"
    # The same MAC as boto3 computes.
    assert srv.client().generate_mac(KeyId=meta["KeyId"], MacAlgorithm="HMAC_SHA_256",
                                     Message=b"signed by the cli")["Mac"] == mac
    macfile = tmp_path / "mac"
    macfile.write_bytes(mac)
    v = json.loads(aws("verify-mac", "--key-id", meta["Arn"], "--mac-algorithm", "HMAC_SHA_256",
                       "--message", f"fileb://{msg}", "--mac", f"fileb://{macfile}").stdout)
    assert v["MacValid"] is True
    macfile.write_bytes(bytes([mac[0] ^ 0x80]) + mac[1:])
    r = aws("verify-mac", "--key-id", meta["KeyId"], "--mac-algorithm", "HMAC_SHA_256",
            "--message", f"fileb://{msg}", "--mac", f"fileb://{macfile}", check=False)
    assert r.returncode != 0 and "KMSInvalidMacException" in r.stderr
    r = aws("encrypt", "--key-id", meta["KeyId"], "--plaintext", f"fileb://{msg}", check=False)
    assert r.returncode != 0 and "InvalidKeyUsageException" in r.stderr


# KeySpec → (SigningAlgorithm, hashlib name, OpenSSL curve name).
ECC_SPECS = {
    "ECC_NIST_P256": ("ECDSA_SHA_256", "sha256", "prime256v1"),
    "ECC_NIST_P384": ("ECDSA_SHA_384", "sha384", "secp384r1"),
    "ECC_NIST_P521": ("ECDSA_SHA_512", "sha512", "secp521r1"),
    "ECC_SECG_P256K1": ("ECDSA_SHA_256", "sha256", "secp256k1"),
}


def openssl_verifies(tmp_path, public_der, digest, signature, *pkeyopts):
    """Whether `openssl pkeyutl -verify` accepts `signature` of `digest` under the DER public key
    (with `-pkeyopt` options for RSA: the digest, the padding)."""
    (tmp_path / "pub.der").write_bytes(public_der)
    (tmp_path / "digest.bin").write_bytes(digest)
    (tmp_path / "sig.bin").write_bytes(signature)
    r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey",
                        str(tmp_path / "pub.der"), "-in", str(tmp_path / "digest.bin"), "-sigfile",
                        str(tmp_path / "sig.bin"), *[a for o in pkeyopts for a in ("-pkeyopt", o)]],
                       capture_output=True, text=True)
    return r.returncode == 0 and "Signature Verified Successfully" in r.stdout


def test_ecc_keys_sign_and_verify_checked_with_openssl(c, raw, tmp_path):
    for spec, (alg, hname, curve) in ECC_SPECS.items():
        meta = c.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY", Description=spec)["KeyMetadata"]
        assert (meta["KeySpec"], meta["KeyUsage"], meta["SigningAlgorithms"]) == (spec, "SIGN_VERIFY", [alg])
        assert "EncryptionAlgorithms" not in meta and "MacAlgorithms" not in meta
        key = meta["KeyId"]
        pk = c.get_public_key(KeyId=key)
        assert (pk["KeyId"], pk["KeySpec"], pk["CustomerMasterKeySpec"], pk["KeyUsage"], pk["SigningAlgorithms"]) == \
            (arn(key), spec, spec, "SIGN_VERIFY", [alg])
        der = pk["PublicKey"]
        (tmp_path / "pub.der").write_bytes(der)
        text = subprocess.run(["openssl", "pkey", "-pubin", "-inform", "DER", "-in", str(tmp_path / "pub.der"),
                               "-text", "-noout"], capture_output=True, text=True, check=True).stdout
        assert curve in text, text
        message = b"a message to sign " + spec.encode()
        digest = hashlib.new(hname, message).digest()
        sig = c.sign(KeyId=key, Message=message, SigningAlgorithm=alg)
        assert (sig["KeyId"], sig["SigningAlgorithm"]) == (arn(key), alg)
        assert openssl_verifies(tmp_path, der, digest, sig["Signature"])
        # The check can fail: another message's digest does not verify.
        assert not openssl_verifies(tmp_path, der, hashlib.new(hname, b"other").digest(), sig["Signature"])
        dsig = c.sign(KeyId=key, Message=digest, MessageType="DIGEST", SigningAlgorithm=alg)["Signature"]
        assert openssl_verifies(tmp_path, der, digest, dsig)
        v = c.verify(KeyId=key, Message=message, Signature=sig["Signature"], SigningAlgorithm=alg)
        assert (v["KeyId"], v["SignatureValid"], v["SigningAlgorithm"]) == (arn(key), True, alg)
        assert c.verify(KeyId=key, Message=digest, MessageType="DIGEST", Signature=dsig,
                        SigningAlgorithm=alg)["SignatureValid"] is True
        for kwargs in [{"Message": message + b"!"}, {"Signature": sig["Signature"][:-1]},
                       {"Message": digest, "MessageType": "DIGEST", "Signature": b"\x30\x00"}]:
            call = {"KeyId": key, "Message": message, "Signature": sig["Signature"], "SigningAlgorithm": alg, **kwargs}
            assert err(c.verify, **call)[0] == "KMSInvalidSignatureException", kwargs
        assert err(c.sign, KeyId=key, Message=digest[:-1], MessageType="DIGEST", SigningAlgorithm=alg) == \
            ("ValidationException", f"Digest is invalid length for algorithm {alg}.")
        wrong = next(a for a, _, _ in ECC_SPECS.values() if a != alg)
        assert err(c.sign, KeyId=key, Message=message, SigningAlgorithm=wrong) == \
            ("InvalidKeyUsageException", f"Algorithm {wrong} is incompatible with key spec {spec}.")
        assert err(c.sign, KeyId=key, Message=message, SigningAlgorithm="RSASSA_PSS_SHA_256")[0] == \
            "InvalidKeyUsageException"
        code, _ = err(c.sign, KeyId=key, Message=message, SigningAlgorithm=alg, DryRun=True)
        assert code == "DryRunOperationException"
        assert err(c.encrypt, KeyId=key, Plaintext=b"x") == \
            ("InvalidKeyUsageException", f"{arn(key)} key usage is SIGN_VERIFY which is not valid for Encrypt.")
        assert err(c.generate_mac, KeyId=key, MacAlgorithm="HMAC_SHA_256", Message=b"x")[0] == \
            "InvalidKeyUsageException"
        code, msg = err(c.enable_key_rotation, KeyId=key)
        assert code == "UnsupportedOperationException"
    mac_key = hmac_key(c)["KeyId"]
    assert err(c.sign, KeyId=mac_key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256") == \
        ("InvalidKeyUsageException", f"{arn(mac_key)} key usage is GENERATE_VERIFY_MAC which is not valid for Sign.")
    aes = c.create_key()["KeyMetadata"]["KeyId"]
    code, _ = err(c.get_public_key, KeyId=aes)
    assert code == "UnsupportedOperationException"
    code, _ = err(raw.sign, KeyId=aes, Message=b"m", SigningAlgorithm="ECDSA_SHA_256", MessageType="EXTERNAL_MU")
    assert code == "ValidationException"
    # Disabled keys sign nothing.
    key = c.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    c.disable_key(KeyId=key)
    assert err(c.sign, KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")[0] == "DisabledException"
    assert err(c.get_public_key, KeyId=key)[0] == "DisabledException"


# RSA SigningAlgorithm → (hashlib name, openssl -pkeyopt options).
RSA_ALGORITHMS = {
    f"RSASSA_{pad}_SHA_{bits}": (f"sha{bits}", [f"digest:sha{bits}"] + (
        ["rsa_padding_mode:pss", "rsa_pss_saltlen:digest"] if pad == "PSS" else ["rsa_padding_mode:pkcs1"]))
    for pad in ("PSS", "PKCS1_V1_5") for bits in (256, 384, 512)
}


def test_rsa_keys_sign_with_pss_and_pkcs1_checked_with_openssl(c, tmp_path):
    for spec, algorithms in [("RSA_2048", list(RSA_ALGORITHMS)), ("RSA_3072", ["RSASSA_PSS_SHA_384"]),
                             ("RSA_4096", ["RSASSA_PKCS1_V1_5_SHA_512"])]:
        meta = c.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]
        assert (meta["KeySpec"], meta["KeyUsage"]) == (spec, "SIGN_VERIFY")
        assert sorted(meta["SigningAlgorithms"]) == sorted(RSA_ALGORITHMS)
        key = meta["KeyId"]
        pk = c.get_public_key(KeyId=key)
        assert (pk["KeySpec"], sorted(pk["SigningAlgorithms"])) == (spec, sorted(RSA_ALGORITHMS))
        der = pk["PublicKey"]
        (tmp_path / "pub.der").write_bytes(der)
        text = subprocess.run(["openssl", "pkey", "-pubin", "-inform", "DER", "-in", str(tmp_path / "pub.der"),
                               "-text", "-noout"], capture_output=True, text=True, check=True).stdout
        assert f"({spec[4:]} bit)" in text, text
        for alg in algorithms:
            hname, opts = RSA_ALGORITHMS[alg]
            message = f"signed with {alg}".encode()
            digest = hashlib.new(hname, message).digest()
            sig = c.sign(KeyId=key, Message=message, SigningAlgorithm=alg)["Signature"]
            assert len(sig) == int(spec[4:]) // 8
            assert openssl_verifies(tmp_path, der, digest, sig, *opts), alg
            assert not openssl_verifies(tmp_path, der, hashlib.new(hname, b"x").digest(), sig, *opts)
            dsig = c.sign(KeyId=key, Message=digest, MessageType="DIGEST", SigningAlgorithm=alg)["Signature"]
            assert openssl_verifies(tmp_path, der, digest, dsig, *opts), alg
            assert c.verify(KeyId=key, Message=message, Signature=sig, SigningAlgorithm=alg)["SignatureValid"] is True
            assert c.verify(KeyId=key, Message=digest, MessageType="DIGEST", Signature=dsig,
                            SigningAlgorithm=alg)["SignatureValid"] is True
            bad = bytes([sig[0] ^ 1]) + sig[1:]
            assert err(c.verify, KeyId=key, Message=message, Signature=bad, SigningAlgorithm=alg)[0] == \
                "KMSInvalidSignatureException"
        assert err(c.sign, KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256") == \
            ("InvalidKeyUsageException", f"Algorithm ECDSA_SHA_256 is incompatible with key spec {spec}.")


def test_generate_data_key_pair_under_a_symmetric_key(c, raw):
    from cryptography.hazmat.primitives import serialization

    aes = c.create_key()["KeyMetadata"]["KeyId"]
    ctx = {"purpose": "pairs"}
    for spec in ("ECC_NIST_P256", "ECC_SECG_P256K1", "RSA_2048"):
        out = c.generate_data_key_pair(KeyId=aes, KeyPairSpec=spec, EncryptionContext=ctx)
        assert (out["KeyId"], out["KeyPairSpec"], len(out["KeyMaterialId"])) == (arn(aes), spec, 64)
        private = serialization.load_der_private_key(out["PrivateKeyPlaintext"], password=None)
        spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        assert spki == out["PublicKey"]
        assert c.decrypt(CiphertextBlob=out["PrivateKeyCiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == \
            out["PrivateKeyPlaintext"]
        assert err(c.decrypt, CiphertextBlob=out["PrivateKeyCiphertextBlob"])[0] == "InvalidCiphertextException"
        bare = c.generate_data_key_pair_without_plaintext(KeyId=aes, KeyPairSpec=spec)
        assert "PrivateKeyPlaintext" not in bare and bare["KeyPairSpec"] == spec
        private = serialization.load_der_private_key(
            c.decrypt(CiphertextBlob=bare["PrivateKeyCiphertextBlob"])["Plaintext"], password=None)
        assert private.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo) == bare["PublicKey"]
    mac_key = hmac_key(c)["KeyId"]
    assert err(c.generate_data_key_pair, KeyId=mac_key, KeyPairSpec="ECC_NIST_P256") == \
        ("InvalidKeyUsageException",
         f"{arn(mac_key)} key usage is GENERATE_VERIFY_MAC which is not valid for GenerateDataKeyPair.")
    assert err(c.generate_data_key_pair, KeyId=aes, KeyPairSpec="SM2") == \
        ("UnsupportedOperationException", "KeyPairSpec SM2 is not supported by this server.")
    assert err(c.generate_data_key_pair, KeyId=aes, KeyPairSpec="ECC_NIST_P384", DryRun=True)[0] == \
        "DryRunOperationException"
    assert err(raw.generate_data_key_pair, KeyId=aes, KeyPairSpec="RSA_1024")[0] == "ValidationException"


def test_aws_cli_signs_with_an_ecc_key(srv, tmp_path):
    def aws(*args):
        return json.loads(srv.aws(*args).stdout)

    key = aws("create-key", "--key-spec", "ECC_NIST_P384", "--key-usage", "SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    msg = tmp_path / "message"
    msg.write_bytes(b"signed by the aws cli")
    sig = base64.b64decode(aws("sign", "--key-id", key, "--message", f"fileb://{msg}", "--message-type", "RAW",
                               "--signing-algorithm", "ECDSA_SHA_384")["Signature"])
    der = base64.b64decode(aws("get-public-key", "--key-id", key)["PublicKey"])
    assert openssl_verifies(tmp_path, der, hashlib.sha384(b"signed by the aws cli").digest(), sig)


def test_hmac_keys_survive_a_restart():
    s = Server()
    try:
        c = s.client()
        before = {}
        for spec, (alg, _) in HMAC_SPECS.items():
            key = hmac_key(c, spec)["KeyId"]
            before[key] = (alg, c.generate_mac(KeyId=key, MacAlgorithm=alg, Message=b"persisted")["Mac"])
        aes = c.create_key()["KeyMetadata"]["KeyId"]
        ct = c.encrypt(KeyId=aes, Plaintext=b"still here")["CiphertextBlob"]
        ecc = c.create_key(KeySpec="ECC_NIST_P521", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        public = c.get_public_key(KeyId=ecc)["PublicKey"]
        sig = c.sign(KeyId=ecc, Message=b"persisted", SigningAlgorithm="ECDSA_SHA_512")["Signature"]
        s.stop()
        s.start()
        c = s.client()
        for key, (alg, mac) in before.items():
            assert c.generate_mac(KeyId=key, MacAlgorithm=alg, Message=b"persisted")["Mac"] == mac
            assert c.verify_mac(KeyId=key, MacAlgorithm=alg, Message=b"persisted", Mac=mac)["MacValid"] is True
            assert c.describe_key(KeyId=key)["KeyMetadata"]["KeyUsage"] == "GENERATE_VERIFY_MAC"
        assert c.decrypt(CiphertextBlob=ct)["Plaintext"] == b"still here"
        assert c.get_public_key(KeyId=ecc)["PublicKey"] == public
        assert c.verify(KeyId=ecc, Message=b"persisted", Signature=sig,
                        SigningAlgorithm="ECDSA_SHA_512")["SignatureValid"] is True
    finally:
        s.stop()
        shutil.rmtree(s.dir, ignore_errors=True)
