"""Imported material for HMAC keys and key pairs (Origin EXTERNAL with KeySpec HMAC_*, ECC_* and
RSA_*), through boto3 against the real `envelope kms serve`: the key waits PendingImport and
refuses its operations, material is wrapped by an independent implementation (`cryptography`:
RSA-OAEP, or RSA-OAEP + AES key wrap with padding for RSA private keys), MACs and signatures made
by the server check out with that implementation and the imported key's own public half, and
material of the wrong length, curve or size, a second material, ImportType and on-demand rotation
are refused as AWS does.
"""

import hashlib
import hmac
import os
import shutil
import signal
import subprocess
import tempfile

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from harness import envelope_bin, free_port, wait_listening

AKID = "AKIAENVELOPEIMPORTPAIR"
SECRET = "import-pairs-secret-0123456789abcdefghij"
REGION, ACCOUNT = "us-east-1", "111122223333"


@pytest.fixture(scope="module")
def kms():
    d = tempfile.mkdtemp(prefix="envelope-kms-import-pairs-")
    creds = os.path.join(d, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n"
                f"  principal: arn:aws:iam::{ACCOUNT}:user/admin\n")
    os.chmod(creds, 0o600)
    port = free_port()
    log = os.path.join(d, "stderr.log")
    p = subprocess.Popen(
        [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off",
         "--data-dir", os.path.join(d, "data"), "--credentials", creds, "--region", REGION, "--account-id", ACCOUNT],
        stdout=subprocess.DEVNULL, stderr=open(log, "a"))
    wait_listening(p, port, log=log)
    yield boto3.client("kms", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION, aws_access_key_id=AKID,
                       aws_secret_access_key=SECRET, config=Config(retries={"max_attempts": 1}))
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0
    shutil.rmtree(d, ignore_errors=True)


def _code(e):
    return e.value.response["Error"]["Code"]


def _oaep(public_der, data):
    public = serialization.load_der_public_key(public_der)
    return public.encrypt(data, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(),
                                             label=None))


def _import(c, key_id, material, algorithm="RSAES_OAEP_SHA_256", spec="RSA_2048", **extra):
    p = c.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm, WrappingKeySpec=spec)
    if algorithm == "RSA_AES_KEY_WRAP_SHA_256":
        aes = os.urandom(32)
        wrapped = _oaep(p["PublicKey"], aes) + aes_key_wrap_with_padding(aes, material)
    else:
        wrapped = _oaep(p["PublicKey"], material)
    extra.setdefault("ExpirationModel", "KEY_MATERIAL_DOES_NOT_EXPIRE")
    return c.import_key_material(KeyId=key_id, ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrapped, **extra)


def _pkcs8(private):
    return private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _spki(private):
    return private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


def test_an_imported_hmac_key_macs_with_the_material_it_was_given(kms):
    meta = kms.create_key(Origin="EXTERNAL", KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    key = meta["KeyId"]
    assert (meta["KeyState"], meta["Origin"], meta["KeySpec"]) == ("PendingImport", "EXTERNAL", "HMAC_256")
    with pytest.raises(ClientError) as e:
        kms.generate_mac(KeyId=key, Message=b"m", MacAlgorithm="HMAC_SHA_256")
    assert _code(e) == "KMSInvalidStateException"
    # AWS's lengths for HMAC_256 material: 32 to 64 bytes.
    for bad in (os.urandom(31), os.urandom(65)):
        with pytest.raises(ClientError) as e:
            _import(kms, key, bad)
        assert _code(e) == "IncorrectKeyMaterialException", e.value
    material = os.urandom(48)
    imported = _import(kms, key, material)
    assert imported["KeyMaterialId"]
    d = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert (d["KeyState"], d["MacAlgorithms"], d["ExpirationModel"]) == (
        "Enabled", ["HMAC_SHA_256"], "KEY_MATERIAL_DOES_NOT_EXPIRE")
    message = b"imported hmac material"
    mac = kms.generate_mac(KeyId=key, Message=message, MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert mac == hmac.new(material, message, hashlib.sha256).digest()
    assert kms.verify_mac(KeyId=key, Message=message, MacAlgorithm="HMAC_SHA_256", Mac=mac)["MacValid"] is True
    # The material of a key pair or HMAC key never changes: other bytes and ImportType are refused.
    with pytest.raises(ClientError) as e:
        _import(kms, key, os.urandom(48))
    assert _code(e) == "IncorrectKeyMaterialException"
    with pytest.raises(ClientError) as e:
        _import(kms, key, material, ImportType="NEW_KEY_MATERIAL")
    assert _code(e) == "ValidationException"
    assert "only usable with symmetric encryption keys" in str(e.value)
    with pytest.raises(ClientError) as e:
        kms.rotate_key_on_demand(KeyId=key)
    assert _code(e) == "UnsupportedOperationException"
    # Deleted, the key waits for the same material again; re-imported, the MACs are the same.
    kms.delete_imported_key_material(KeyId=key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingImport"
    with pytest.raises(ClientError) as e:
        kms.verify_mac(KeyId=key, Message=message, MacAlgorithm="HMAC_SHA_256", Mac=mac)
    assert _code(e) == "KMSInvalidStateException"
    _import(kms, key, material)
    assert kms.generate_mac(KeyId=key, Message=message, MacAlgorithm="HMAC_SHA_256")["Mac"] == mac


@pytest.mark.parametrize("spec,curve,alg,hash_", [
    ("ECC_NIST_P256", ec.SECP256R1(), "ECDSA_SHA_256", hashes.SHA256()),
    ("ECC_NIST_P384", ec.SECP384R1(), "ECDSA_SHA_384", hashes.SHA384()),
    ("ECC_NIST_P521", ec.SECP521R1(), "ECDSA_SHA_512", hashes.SHA512()),
    ("ECC_SECG_P256K1", ec.SECP256K1(), "ECDSA_SHA_256", hashes.SHA256()),
])
def test_an_imported_ecc_key_signs_as_its_own_private_key(kms, spec, curve, alg, hash_):
    key = kms.create_key(Origin="EXTERNAL", KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as e:
        kms.get_public_key(KeyId=key)
    assert _code(e) == "KMSInvalidStateException"
    with pytest.raises(ClientError) as e:
        kms.sign(KeyId=key, Message=b"m", SigningAlgorithm=alg)
    assert _code(e) == "KMSInvalidStateException"
    mine = ec.generate_private_key(curve)
    # A key of another curve is not this key's material.
    other = ec.SECP384R1() if spec != "ECC_NIST_P384" else ec.SECP256R1()
    with pytest.raises(ClientError) as e:
        _import(kms, key, _pkcs8(ec.generate_private_key(other)), "RSA_AES_KEY_WRAP_SHA_256", "RSA_4096")
    assert _code(e) == "IncorrectKeyMaterialException"
    # P-521's PKCS#8 does not fit one RSA_2048 OAEP block: the hybrid wrap carries it.
    algorithm, wrapping = ("RSAES_OAEP_SHA_256", "RSA_3072") if spec != "ECC_NIST_P521" else (
        "RSA_AES_KEY_WRAP_SHA_256", "RSA_2048")
    _import(kms, key, _pkcs8(mine), algorithm, wrapping)
    assert kms.get_public_key(KeyId=key)["PublicKey"] == _spki(mine)
    message = b"signed by imported material"
    sig = kms.sign(KeyId=key, Message=message, SigningAlgorithm=alg)["Signature"]
    mine.public_key().verify(sig, message, ec.ECDSA(hash_))  # raises if it does not verify
    assert kms.verify(KeyId=key, Message=message, Signature=sig, SigningAlgorithm=alg)["SignatureValid"] is True
    # Disabled, and pending deletion: the key state rules of every key.
    kms.disable_key(KeyId=key)
    with pytest.raises(ClientError) as e:
        kms.sign(KeyId=key, Message=message, SigningAlgorithm=alg)
    assert _code(e) == "DisabledException"
    kms.enable_key(KeyId=key)
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    with pytest.raises(ClientError) as e:
        kms.get_public_key(KeyId=key)
    assert _code(e) == "KMSInvalidStateException"


def test_an_imported_rsa_key_signs_and_needs_the_hybrid_wrap(kms):
    key = kms.create_key(Origin="EXTERNAL", KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    # An RSA private key does not fit one RSA-OAEP block: AWS requires an RSA_AES wrap.
    with pytest.raises(ClientError) as e:
        kms.get_parameters_for_import(KeyId=key, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_4096")
    assert _code(e) == "ValidationException"
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ClientError) as e:
        _import(kms, key, _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=3072)),
                "RSA_AES_KEY_WRAP_SHA_256", "RSA_4096")
    assert _code(e) == "IncorrectKeyMaterialException"
    _import(kms, key, _pkcs8(mine), "RSA_AES_KEY_WRAP_SHA_256", "RSA_4096")
    assert kms.get_public_key(KeyId=key)["PublicKey"] == _spki(mine)
    message = b"rsa signed by imported material"
    pss = kms.sign(KeyId=key, Message=message, SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    mine.public_key().verify(pss, message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                        salt_length=padding.PSS.DIGEST_LENGTH), hashes.SHA256())
    v15 = kms.sign(KeyId=key, Message=message, SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_384")["Signature"]
    mine.public_key().verify(v15, message, padding.PKCS1v15(), hashes.SHA384())


def test_material_that_is_not_a_private_key_is_refused(kms):
    key = kms.create_key(Origin="EXTERNAL", KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    for junk in (os.urandom(32), b"\x30\x03\x02\x01\x00", _spki(ec.generate_private_key(ec.SECP256R1()))):
        with pytest.raises(ClientError) as e:
            _import(kms, key, junk)
        assert _code(e) == "IncorrectKeyMaterialException"
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingImport"


def test_imported_rsa_encryption_and_ecdh_keys_use_their_material(kms):
    rsa_key = kms.create_key(Origin="EXTERNAL", KeySpec="RSA_3072", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    mine = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    _import(kms, rsa_key, _pkcs8(mine), "RSA_AES_KEY_WRAP_SHA_256", "RSA_4096")
    assert kms.get_public_key(KeyId=rsa_key)["PublicKey"] == _spki(mine)
    # Encrypted by the client with the imported key's public half; decrypted by the server.
    ct = mine.public_key().encrypt(b"to the imported key", padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    out = kms.decrypt(KeyId=rsa_key, CiphertextBlob=ct, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert out["Plaintext"] == b"to the imported key"

    ecdh_key = kms.create_key(Origin="EXTERNAL", KeySpec="ECC_NIST_P384", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]
    mine = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ClientError) as e:
        kms.derive_shared_secret(KeyId=ecdh_key["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=_spki(mine))
    assert _code(e) == "KMSInvalidStateException"
    _import(kms, ecdh_key["KeyId"], _pkcs8(mine), "RSAES_OAEP_SHA_256", "RSA_3072")
    peer = ec.generate_private_key(ec.SECP384R1())
    secret = kms.derive_shared_secret(KeyId=ecdh_key["KeyId"], KeyAgreementAlgorithm="ECDH",
                                      PublicKey=_spki(peer))["SharedSecret"]
    assert secret == peer.exchange(ec.ECDH(), mine.public_key())
