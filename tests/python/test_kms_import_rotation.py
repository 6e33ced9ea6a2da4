"""On-demand rotation of keys with imported material (AWS KMS, 2025) through boto3 against the
real `envelope kms serve`: ImportKeyMaterial with ImportType NEW_KEY_MATERIAL / EXISTING_KEY_MATERIAL
and KeyMaterialId, RotateKeyOnDemand, ListKeyRotations' per-material entries,
DeleteImportedKeyMaterial of one material. Material is wrapped by an independent implementation
(`cryptography`), and the state survives a restart of the server.
"""

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

AKID = "AKIAENVELOPEIMPORTROT"
SECRET = "import-rotation-secret-0123456789abcdefg"
REGION, ACCOUNT = "us-east-1", "111122223333"
CTX = {"app": "import-rotation"}


class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="envelope-kms-import-rotation-")
        self.creds = os.path.join(self.dir, "credentials.yaml")
        with open(self.creds, "w") as f:
            f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n"
                    f"  principal: arn:aws:iam::{ACCOUNT}:user/admin\n")
        os.chmod(self.creds, 0o600)
        self.port = free_port()
        self.proc = None

    def start(self):
        log = os.path.join(self.dir, "stderr.log")
        self.proc = subprocess.Popen(
            [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{self.port}", "--http-addr", "off",
             "--data-dir", os.path.join(self.dir, "data"), "--credentials", self.creds, "--region", REGION,
             "--account-id", ACCOUNT],
            stdout=subprocess.DEVNULL, stderr=open(log, "a"))
        wait_listening(self.proc, self.port, log=log)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0

    def client(self):
        return boto3.client("kms", endpoint_url=f"http://127.0.0.1:{self.port}", region_name=REGION,
                            aws_access_key_id=AKID, aws_secret_access_key=SECRET,
                            config=Config(retries={"max_attempts": 1}))


@pytest.fixture
def server():
    s = Server()
    s.start()
    yield s
    s.stop()
    shutil.rmtree(s.dir, ignore_errors=True)


def _wrap(public_der, material):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    public = serialization.load_der_public_key(public_der)
    return public.encrypt(material, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()),
                                                 algorithm=hashes.SHA256(), label=None))


def _import(c, key_id, material, **extra):
    p = c.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    extra.setdefault("ExpirationModel", "KEY_MATERIAL_DOES_NOT_EXPIRE")
    return c.import_key_material(KeyId=key_id, ImportToken=p["ImportToken"],
                                 EncryptedKeyMaterial=_wrap(p["PublicKey"], material), **extra)


def _code(e):
    return e.value.response["Error"]["Code"]


def _materials(c, key_id):
    return c.list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]


def _decrypt(c, blob):
    return c.decrypt(CiphertextBlob=blob, EncryptionContext=CTX)


def test_refusals_change_nothing(server):
    c = server.client()
    key = c.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    first = os.urandom(32)
    # Existing material into a key that never had any.
    with pytest.raises(ClientError) as e:
        _import(c, key, first, ImportType="EXISTING_KEY_MATERIAL")
    assert _code(e) == "IncorrectKeyMaterialException"
    m1 = _import(c, key, first)["KeyMaterialId"]
    # Nothing pending: no rotation.
    with pytest.raises(ClientError) as e:
        c.rotate_key_on_demand(KeyId=key)
    assert _code(e) == "KMSInvalidStateException"
    assert "No available key material pending rotation" in str(e.value)
    # The current material again as new; other bytes under its id.
    with pytest.raises(ClientError) as e:
        _import(c, key, first, ImportType="NEW_KEY_MATERIAL")
    assert _code(e) == "IncorrectKeyMaterialException"
    with pytest.raises(ClientError) as e:
        _import(c, key, os.urandom(32), ImportType="EXISTING_KEY_MATERIAL", KeyMaterialId=m1)
    assert _code(e) == "IncorrectKeyMaterialException"
    # One material pending rotation at a time.
    _import(c, key, os.urandom(32), ImportType="NEW_KEY_MATERIAL")
    with pytest.raises(ClientError) as e:
        _import(c, key, os.urandom(32), ImportType="NEW_KEY_MATERIAL")
    assert _code(e) == "KMSInvalidStateException"
    states = [(m["KeyMaterialState"], m["ImportState"]) for m in _materials(c, key)]
    assert states == [("CURRENT", "IMPORTED"), ("PENDING_ROTATION", "IMPORTED")]
    assert c.describe_key(KeyId=key)["KeyMetadata"]["CurrentKeyMaterialId"] == m1


def test_import_rotate_delete_reimport(server):
    c = server.client()
    meta = c.create_key(Origin="EXTERNAL", Description="byok rotation")["KeyMetadata"]
    key, arn = meta["KeyId"], meta["Arn"]
    first, second = os.urandom(32), os.urandom(32)

    r = _import(c, key, first, KeyMaterialDescription="first material")
    m1 = r["KeyMaterialId"]
    assert r["KeyId"] == arn and len(m1) == 64
    assert c.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    ct1 = c.encrypt(KeyId=key, Plaintext=b"under the first", EncryptionContext=CTX)["CiphertextBlob"]
    dk1 = c.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=CTX)
    assert dk1["KeyMaterialId"] == m1

    r = _import(c, key, second, ImportType="NEW_KEY_MATERIAL", KeyMaterialDescription="second material")
    m2 = r["KeyMaterialId"]
    assert m2 != m1
    listed = _materials(c, key)
    assert [(m["KeyMaterialId"], m["KeyMaterialState"], m["ImportState"]) for m in listed] == [
        (m1, "CURRENT", "IMPORTED"), (m2, "PENDING_ROTATION", "IMPORTED")]
    assert listed[1]["KeyMaterialDescription"] == "second material"
    assert "RotationDate" not in listed[1] and "RotationType" not in listed[1]
    # Pending material is not used yet, and not a rotation.
    assert c.list_key_rotations(KeyId=key)["Rotations"] == []
    assert c.generate_data_key(KeyId=key, KeySpec="AES_256")["KeyMaterialId"] == m1

    assert c.rotate_key_on_demand(KeyId=key)["KeyId"] == arn
    assert c.describe_key(KeyId=key)["KeyMetadata"]["CurrentKeyMaterialId"] == m2
    ct2 = c.encrypt(KeyId=key, Plaintext=b"under the second", EncryptionContext=CTX)["CiphertextBlob"]
    dk2 = c.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=CTX)
    assert dk2["KeyMaterialId"] == m2 != dk1["KeyMaterialId"]
    d1, d2 = _decrypt(c, ct1), _decrypt(c, ct2)
    assert (d1["Plaintext"], d1["KeyMaterialId"]) == (b"under the first", m1)
    assert (d2["Plaintext"], d2["KeyMaterialId"]) == (b"under the second", m2)
    assert _decrypt(c, dk1["CiphertextBlob"])["Plaintext"] == dk1["Plaintext"]
    rotations = c.list_key_rotations(KeyId=key)["Rotations"]
    assert [(r["KeyMaterialId"], r["KeyMaterialState"], r["RotationType"]) for r in rotations] == [
        (m2, "CURRENT", "ON_DEMAND")]
    assert "RotationDate" in rotations[0]
    assert [m["KeyMaterialState"] for m in _materials(c, key)] == ["NON_CURRENT", "CURRENT"]

    # Deleting the first material: it waits for re-import. As AWS documents, deleting any
    # material permanently associated with the key makes the key PendingImport, so neither
    # ciphertext decrypts until it is back.
    r = c.delete_imported_key_material(KeyId=key, KeyMaterialId=m1)
    assert (r["KeyId"], r["KeyMaterialId"]) == (arn, m1)
    assert c.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingImport"
    listed = _materials(c, key)
    assert [(m["KeyMaterialState"], m["ImportState"]) for m in listed] == [
        ("NON_CURRENT", "PENDING_IMPORT"), ("CURRENT", "IMPORTED")]
    for blob in (ct1, ct2):
        with pytest.raises(ClientError) as e:
            _decrypt(c, blob)
        assert _code(e) == "KMSInvalidStateException"

    # Re-import of the first material by its id: both decrypt again; its description is kept.
    r = _import(c, key, first, ImportType="EXISTING_KEY_MATERIAL", KeyMaterialId=m1)
    assert r["KeyMaterialId"] == m1
    assert c.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    assert _decrypt(c, ct1)["Plaintext"] == b"under the first"
    assert _decrypt(c, ct2)["Plaintext"] == b"under the second"
    assert _materials(c, key)[0]["KeyMaterialDescription"] == "first material"

    # The records are in the store: the same after a restart.
    before = _materials(c, key)
    server.stop()
    server.start()
    c = server.client()
    assert _materials(c, key) == before
    assert _decrypt(c, ct1)["KeyMaterialId"] == m1

    # Without an id, DeleteImportedKeyMaterial deletes the current material.
    assert c.delete_imported_key_material(KeyId=key)["KeyMaterialId"] == m2
    assert "CurrentKeyMaterialId" not in c.describe_key(KeyId=key)["KeyMetadata"]
    with pytest.raises(ClientError) as e:
        _decrypt(c, ct2)
    assert _code(e) == "KMSInvalidStateException"
    _import(c, key, second)
    assert _decrypt(c, ct2)["Plaintext"] == b"under the second"


def test_expiry_is_per_material(server):
    c = server.client()
    key = c.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    _import(c, key, os.urandom(32))
    import time
    valid_to = int(time.time()) + 3 * 24 * 3600
    m2 = _import(c, key, os.urandom(32), ImportType="NEW_KEY_MATERIAL", ExpirationModel="KEY_MATERIAL_EXPIRES",
                 ValidTo=valid_to)["KeyMaterialId"]
    listed = _materials(c, key)
    assert listed[0]["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE" and "ValidTo" not in listed[0]
    assert listed[1]["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert int(listed[1]["ValidTo"].timestamp()) == valid_to
    # DescribeKey's expiry is the current material's until a rotation makes m2 current.
    assert c.describe_key(KeyId=key)["KeyMetadata"]["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"
    c.rotate_key_on_demand(KeyId=key)
    meta = c.describe_key(KeyId=key)["KeyMetadata"]
    assert (meta["CurrentKeyMaterialId"], meta["ExpirationModel"]) == (m2, "KEY_MATERIAL_EXPIRES")
    assert int(meta["ValidTo"].timestamp()) == valid_to
