"""Every successful response of `envelope kms serve`, walked against botocore's KMS service
model: no member the model does not define (at any depth), each member of the model's type, and
the members AWS always sends present (e.g. KeyMaterialId on Decrypt and GenerateDataKey*,
SourceKeyMaterialId/DestinationKeyMaterialId on ReEncrypt, CurrentKeyMaterialId on DescribeKey),
and those AWS sends only for some keys present exactly then (the key material ids only with
symmetric encryption keys, each usage's algorithm list).

The raw JSON body is checked (captured from the HTTP response before botocore parses it, since
botocore drops members it does not know).
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import boto3
import botocore.session
import pytest
from botocore.config import Config

from harness import envelope_bin, free_port, wait_listening

AKID = "AKIAENVELOPESHAPES01"
SECRET = "shapes-test-secret-0123456789abcdefghijk"
REGION, ACCOUNT = "us-east-1", "111122223333"

MODEL = botocore.session.get_session().get_service_model("kms")

# Members AWS sends in every successful response of the operation (beyond the model's own
# `required` lists, which KMS outputs leave empty).
ALWAYS = {
    "Encrypt": {"CiphertextBlob", "KeyId", "EncryptionAlgorithm"},
    "Decrypt": {"KeyId", "Plaintext", "EncryptionAlgorithm"},
    "ReEncrypt": {"CiphertextBlob", "SourceKeyId", "KeyId", "SourceEncryptionAlgorithm",
                  "DestinationEncryptionAlgorithm"},
    "GenerateDataKey": {"CiphertextBlob", "Plaintext", "KeyId", "KeyMaterialId"},
    "GenerateDataKeyWithoutPlaintext": {"CiphertextBlob", "KeyId", "KeyMaterialId"},
    "GenerateRandom": {"Plaintext"},
    "CreateKey": {"KeyMetadata"},
    "DescribeKey": {"KeyMetadata"},
    "ScheduleKeyDeletion": {"KeyId", "DeletionDate", "KeyState", "PendingWindowInDays"},
    "CancelKeyDeletion": {"KeyId"},
    "RotateKeyOnDemand": {"KeyId"},
    "GetKeyRotationStatus": {"KeyRotationEnabled", "KeyId"},
    "GetParametersForImport": {"KeyId", "ImportToken", "PublicKey", "ParametersValidTo"},
    "ImportKeyMaterial": {"KeyId", "KeyMaterialId"},
    "DeleteImportedKeyMaterial": {"KeyId", "KeyMaterialId"},
    "ListKeys": {"Keys", "Truncated"},
    "ListAliases": {"Aliases", "Truncated"},
    "ListKeyPolicies": {"PolicyNames", "Truncated"},
    "ListResourceTags": {"Tags", "Truncated"},
    "ListKeyRotations": {"Rotations", "Truncated"},
    "GetKeyPolicy": {"Policy", "PolicyName"},
    "CreateGrant": {"GrantToken", "GrantId"},
    "ListGrants": {"Grants", "Truncated"},
    "ListRetirableGrants": {"Grants", "Truncated"},
    "GenerateMac": {"Mac", "MacAlgorithm", "KeyId"},
    "VerifyMac": {"KeyId", "MacValid", "MacAlgorithm"},
    "Sign": {"KeyId", "Signature", "SigningAlgorithm"},
    "GenerateDataKeyPair": {"PrivateKeyCiphertextBlob", "PrivateKeyPlaintext", "PublicKey", "KeyId", "KeyPairSpec",
                            "KeyMaterialId"},
    "GenerateDataKeyPairWithoutPlaintext": {"PrivateKeyCiphertextBlob", "PublicKey", "KeyId", "KeyPairSpec",
                                            "KeyMaterialId"},
    "Verify": {"KeyId", "SignatureValid", "SigningAlgorithm"},
    "GetPublicKey": {"KeyId", "PublicKey", "CustomerMasterKeySpec", "KeySpec", "KeyUsage"},
    "DeriveSharedSecret": {"KeyId", "SharedSecret", "KeyAgreementAlgorithm", "KeyOrigin"},
}

# A key material id member, and the algorithm member saying whether a symmetric key was used:
# AWS sends the id only then.
MATERIAL_IDS = {"Decrypt": [("KeyMaterialId", "EncryptionAlgorithm")],
                "ReEncrypt": [("SourceKeyMaterialId", "SourceEncryptionAlgorithm"),
                              ("DestinationKeyMaterialId", "DestinationEncryptionAlgorithm")]}

# KeyMetadata members of every key AWS describes (single-Region, AWS_KMS or EXTERNAL), and those
# of each key usage (HMAC keys: MacAlgorithms and no EncryptionAlgorithms).
KEY_METADATA = {"AWSAccountId", "KeyId", "Arn", "CreationDate", "Enabled", "Description", "KeyUsage", "KeyState",
                "Origin", "KeyManager", "CustomerMasterKeySpec", "KeySpec", "MultiRegion"}
ALGORITHM_LISTS = {"EncryptionAlgorithms", "MacAlgorithms", "SigningAlgorithms", "KeyAgreementAlgorithms"}
BY_USAGE = {usage: ({member}, ALGORITHM_LISTS - {member}) for usage, member in [
    ("ENCRYPT_DECRYPT", "EncryptionAlgorithms"), ("GENERATE_VERIFY_MAC", "MacAlgorithms"),
    ("SIGN_VERIFY", "SigningAlgorithms"), ("KEY_AGREEMENT", "KeyAgreementAlgorithms")]}


def walk(shape, value, path, problems):
    """Appends to `problems` every member of `value` the model does not define or types otherwise."""
    t = shape.type_name
    if t == "structure":
        if not isinstance(value, dict):
            problems.append(f"{path}: {type(value).__name__} where the model has a structure")
            return
        for k, v in value.items():
            if k not in shape.members:
                problems.append(f"{path}.{k}: not in the model's {shape.name}")
            else:
                walk(shape.members[k], v, f"{path}.{k}", problems)
    elif t == "list":
        if not isinstance(value, list):
            problems.append(f"{path}: {type(value).__name__} where the model has a list")
            return
        for i, v in enumerate(value):
            walk(shape.member, v, f"{path}[{i}]", problems)
    elif t == "map":
        if not isinstance(value, dict):
            problems.append(f"{path}: {type(value).__name__} where the model has a map")
            return
        for k, v in value.items():
            walk(shape.value, v, f"{path}[{k}]", problems)
    elif t == "blob":
        try:
            base64.b64decode(value, validate=True)
        except Exception:  # noqa: BLE001 — reported
            problems.append(f"{path}: not base64")
    elif t == "string":
        if not isinstance(value, str):
            problems.append(f"{path}: {value!r} is not a string")
        elif shape.enum and value not in shape.enum:
            problems.append(f"{path}: {value!r} is not one of the model's {shape.name} values")
    elif t == "boolean":
        if not isinstance(value, bool):
            problems.append(f"{path}: {value!r} is not a boolean")
    elif t in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{path}: {value!r} is not an integer")
    elif t == "timestamp":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{path}: {value!r} is not epoch seconds")


@pytest.fixture(scope="module")
def kms():
    d = tempfile.mkdtemp(prefix="envelope-kms-shapes-")
    creds = os.path.join(d, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n"
                f"  principal: arn:aws:iam::{ACCOUNT}:user/admin\n")
    os.chmod(creds, 0o600)
    port = free_port()
    p = subprocess.Popen(
        [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off",
         "--data-dir", os.path.join(d, "data"), "--credentials", creds, "--region", REGION, "--account-id", ACCOUNT],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "stderr.log"), "w"))
    wait_listening(p, port, log=os.path.join(d, "stderr.log"))
    c = boto3.client("kms", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION, aws_access_key_id=AKID,
                     aws_secret_access_key=SECRET, config=Config(retries={"max_attempts": 1}))
    raw = []

    def capture(http_response, model, **_):
        raw.append((model.name, http_response.status_code, http_response.content))

    c.meta.events.register("after-call.kms", capture)
    yield c, raw
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0
    shutil.rmtree(d, ignore_errors=True)


def _wrap(public_der, material):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    public = serialization.load_der_public_key(public_der)
    return public.encrypt(material, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()),
                                                 algorithm=hashes.SHA256(), label=None))


def exercise(c):
    """Calls every operation the server implements, successfully."""
    key = c.create_key(Description="shapes", Tags=[{"TagKey": "team", "TagValue": "a"}])["KeyMetadata"]["KeyId"]
    other = c.create_key()["KeyMetadata"]["KeyId"]
    c.describe_key(KeyId=key)
    c.list_keys(Limit=1)
    c.update_key_description(KeyId=key, Description="shapes 2")
    c.create_alias(AliasName="alias/shapes", TargetKeyId=key)
    c.update_alias(AliasName="alias/shapes", TargetKeyId=other)
    c.list_aliases()
    c.list_aliases(KeyId=other)
    c.delete_alias(AliasName="alias/shapes")
    ct = c.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"a": "b"})["CiphertextBlob"]
    c.decrypt(CiphertextBlob=ct, EncryptionContext={"a": "b"})
    c.re_encrypt(CiphertextBlob=ct, SourceEncryptionContext={"a": "b"}, DestinationKeyId=other)
    c.generate_data_key(KeyId=key, KeySpec="AES_256")
    c.generate_data_key_without_plaintext(KeyId=key, NumberOfBytes=16)
    c.generate_random(NumberOfBytes=8)
    c.get_key_policy(KeyId=key, PolicyName="default")
    c.put_key_policy(KeyId=key, PolicyName="default", Policy=c.get_key_policy(KeyId=key)["Policy"])
    c.list_key_policies(KeyId=key)
    c.tag_resource(KeyId=key, Tags=[{"TagKey": "env", "TagValue": "test"}])
    c.untag_resource(KeyId=key, TagKeys=["env"])
    c.list_resource_tags(KeyId=key)
    c.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    c.get_key_rotation_status(KeyId=key)
    c.rotate_key_on_demand(KeyId=key)
    c.list_key_rotations(KeyId=key)
    c.list_key_rotations(KeyId=key, IncludeKeyMaterial="ALL_KEY_MATERIAL")
    c.disable_key_rotation(KeyId=key)
    c.get_key_rotation_status(KeyId=key)
    c.disable_key(KeyId=key)
    c.enable_key(KeyId=key)
    c.schedule_key_deletion(KeyId=other, PendingWindowInDays=7)
    c.describe_key(KeyId=other)
    c.cancel_key_deletion(KeyId=other)
    ext = c.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    c.describe_key(KeyId=ext)
    p = c.get_parameters_for_import(KeyId=ext, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    first = os.urandom(32)
    m1 = c.import_key_material(KeyId=ext, ImportToken=p["ImportToken"],
                               EncryptedKeyMaterial=_wrap(p["PublicKey"], first),
                               ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")["KeyMaterialId"]
    c.describe_key(KeyId=ext)
    c.list_key_rotations(KeyId=ext, IncludeKeyMaterial="ALL_KEY_MATERIAL")
    ct = c.encrypt(KeyId=ext, Plaintext=b"y")["CiphertextBlob"]
    c.decrypt(CiphertextBlob=ct)
    # Several materials: new material pending rotation, rotated to, the first deleted and back.
    p = c.get_parameters_for_import(KeyId=ext, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    c.import_key_material(KeyId=ext, ImportToken=p["ImportToken"],
                          EncryptedKeyMaterial=_wrap(p["PublicKey"], os.urandom(32)),
                          ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=int(time.time()) + 86_400,
                          ImportType="NEW_KEY_MATERIAL", KeyMaterialDescription="next material")
    c.list_key_rotations(KeyId=ext, IncludeKeyMaterial="ALL_KEY_MATERIAL")
    c.rotate_key_on_demand(KeyId=ext)
    c.list_key_rotations(KeyId=ext)
    c.describe_key(KeyId=ext)
    c.generate_data_key(KeyId=ext, KeySpec="AES_256")
    c.delete_imported_key_material(KeyId=ext, KeyMaterialId=m1)
    c.list_key_rotations(KeyId=ext, IncludeKeyMaterial="ALL_KEY_MATERIAL")
    c.describe_key(KeyId=ext)
    p = c.get_parameters_for_import(KeyId=ext, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    c.import_key_material(KeyId=ext, ImportToken=p["ImportToken"], EncryptedKeyMaterial=_wrap(p["PublicKey"], first),
                          ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE", ImportType="EXISTING_KEY_MATERIAL",
                          KeyMaterialId=m1)
    c.decrypt(CiphertextBlob=ct)
    c.delete_imported_key_material(KeyId=ext)
    c.describe_key(KeyId=ext)
    # Grants.
    admin = f"arn:aws:iam::{ACCOUNT}:user/admin"
    g = c.create_grant(KeyId=key, GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:user/app", RetiringPrincipal=admin,
                       Operations=["Encrypt", "Decrypt"], Name="shapes",
                       Constraints={"EncryptionContextSubset": {"a": "b"}})
    c.create_grant(KeyId=key, GranteePrincipal=admin, Operations=["DescribeKey"])
    c.encrypt(KeyId=key, Plaintext=b"z", GrantTokens=[g["GrantToken"]])
    c.list_grants(KeyId=key, Limit=1)
    c.list_grants(KeyId=key)
    c.list_retirable_grants(RetiringPrincipal=admin)
    c.retire_grant(GrantToken=g["GrantToken"])
    c.revoke_grant(KeyId=key, GrantId=c.list_grants(KeyId=key)["Grants"][0]["GrantId"])
    # HMAC keys.
    mac_key = c.create_key(KeySpec="HMAC_384", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    c.describe_key(KeyId=mac_key)
    mac = c.generate_mac(KeyId=mac_key, MacAlgorithm="HMAC_SHA_384", Message=b"m")["Mac"]
    c.verify_mac(KeyId=mac_key, MacAlgorithm="HMAC_SHA_384", Message=b"m", Mac=mac)
    c.get_key_rotation_status(KeyId=mac_key)
    # Signing keys.
    ecc = c.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    c.describe_key(KeyId=ecc)
    c.get_public_key(KeyId=ecc)
    sig = c.sign(KeyId=ecc, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    c.verify(KeyId=ecc, Message=b"m", Signature=sig, SigningAlgorithm="ECDSA_SHA_256")
    c.generate_data_key_pair(KeyId=key, KeyPairSpec="ECC_NIST_P256")
    c.generate_data_key_pair_without_plaintext(KeyId=key, KeyPairSpec="RSA_2048")
    rsa = c.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    c.describe_key(KeyId=rsa)
    c.get_public_key(KeyId=rsa)
    sig = c.sign(KeyId=rsa, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    c.verify(KeyId=rsa, Message=b"m", Signature=sig, SigningAlgorithm="RSASSA_PSS_SHA_256")
    # RSA encryption keys, to and from symmetric ones.
    rsa = c.create_key(KeySpec="RSA_3072", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    c.describe_key(KeyId=rsa)
    c.get_public_key(KeyId=rsa)
    ct = c.encrypt(KeyId=rsa, Plaintext=b"m", EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    c.decrypt(CiphertextBlob=ct, KeyId=rsa, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    ct = c.re_encrypt(CiphertextBlob=ct, SourceKeyId=rsa, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256",
                      DestinationKeyId=key)["CiphertextBlob"]
    c.re_encrypt(CiphertextBlob=ct, DestinationKeyId=rsa, DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1")
    # Key agreement keys.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    ecdh = c.create_key(KeySpec="ECC_NIST_P384", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["KeyId"]
    c.describe_key(KeyId=ecdh)
    c.get_public_key(KeyId=ecdh)
    peer = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    c.derive_shared_secret(KeyId=ecdh, KeyAgreementAlgorithm="ECDH", PublicKey=peer)


def test_every_response_matches_the_model(kms):
    c, raw = kms
    exercise(c)
    seen = {name for name, _, _ in raw}
    implemented = set(ALWAYS) | {"CreateAlias", "UpdateAlias", "DeleteAlias", "UpdateKeyDescription", "PutKeyPolicy",
                                 "TagResource", "UntagResource", "EnableKeyRotation", "DisableKeyRotation",
                                 "DisableKey", "EnableKey", "RetireGrant", "RevokeGrant"}
    assert implemented <= seen, implemented - seen
    problems = []
    for name, status, body in raw:
        assert status == 200, (name, status, body)
        op = MODEL.operation_model(name)
        doc = json.loads(body) if body else {}
        if op.output_shape is None:
            if doc:
                problems.append(f"{name}: a body {doc!r} where the model has no output")
            continue
        walk(op.output_shape, doc, name, problems)
        missing = ALWAYS.get(name, set()) - set(doc)
        if missing:
            problems.append(f"{name}: missing {sorted(missing)}")
        for member, algorithm in MATERIAL_IDS.get(name, []):
            if (member in doc) != (doc.get(algorithm) == "SYMMETRIC_DEFAULT"):
                problems.append(f"{name}: {member} {'with' if member in doc else 'without'} {doc.get(algorithm)}")
        if name == "GetPublicKey":
            wanted, unwanted = BY_USAGE[doc["KeyUsage"]]
            if wanted - set(doc) or unwanted & set(doc):
                problems.append(f"{name} ({doc['KeyUsage']}): algorithm lists {sorted(ALGORITHM_LISTS & set(doc))}")
        meta = doc.get("KeyMetadata")
        if meta is not None:
            missing = KEY_METADATA - set(meta)
            wanted, unwanted = BY_USAGE[meta["KeyUsage"]]
            missing |= wanted - set(meta)
            if unwanted & set(meta):
                problems.append(f"{name} ({meta['KeyUsage']}): KeyMetadata has {sorted(unwanted & set(meta))}")
            # Present for symmetric encryption keys with material, and only for them (the model).
            if meta["KeyState"] != "PendingImport" and meta["KeySpec"] == "SYMMETRIC_DEFAULT":
                missing |= {"CurrentKeyMaterialId"} - set(meta)
            elif "CurrentKeyMaterialId" in meta and meta["KeySpec"] != "SYMMETRIC_DEFAULT":
                problems.append(f"{name} ({meta['KeySpec']}): CurrentKeyMaterialId on a key that is not symmetric")
            if meta["Origin"] == "EXTERNAL" and meta["KeyState"] != "PendingImport":
                missing |= {"ExpirationModel"} - set(meta)
            if meta["KeyState"] == "PendingDeletion":
                missing |= {"DeletionDate"} - set(meta)
                # Only multi-Region replicas pending deletion carry the window.
                if "PendingDeletionWindowInDays" in meta:
                    problems.append(f"{name}: PendingDeletionWindowInDays on a single-Region key")
            if missing:
                problems.append(f"{name} ({meta['KeyState']}, {meta['Origin']}): KeyMetadata missing {sorted(missing)}")
    assert not problems, "\n".join(problems)
