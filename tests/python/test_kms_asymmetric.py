"""Asymmetric encryption and key agreement keys in `envelope kms serve`, against boto3, the aws
CLI and openssl:

* RSA keys with KeyUsage ENCRYPT_DECRYPT (RSA_2048/3072/4096): Encrypt, Decrypt and ReEncrypt
  with RSAES_OAEP_SHA_1 / RSAES_OAEP_SHA_256. The ciphertext is the raw RSA-OAEP output, so
  `openssl pkeyutl -encrypt` with the key's GetPublicKey output makes ciphertexts the server
  decrypts.
* ECC keys with KeyUsage KEY_AGREEMENT (ECC_NIST_P256/P384/P521): DeriveSharedSecret (ECDH),
  its secret the one `openssl pkeyutl -derive` computes from the peer's side.

Every error path answers with AWS's exception type; key states, key policies and grants apply
to the new operations as to the others. The server binary comes from ENVELOPE_BIN (default
target/debug/envelope).
"""

import base64
import json
import os
import shutil
import subprocess
import time

import pytest
from botocore.exceptions import ClientError

from test_kms_key_specs import ADMIN, APP, APP_AKID, APP_SECRET, Server, arn
# The key-spec tests' fixtures (a server of this module's own, its clients: scope="module").
from test_kms_key_specs import c, raw, srv  # noqa: F401

# KeySpec → (modulus length, longest plaintext with RSAES_OAEP_SHA_1, with RSAES_OAEP_SHA_256):
# AWS's documented limits.
RSA_SPECS = {"RSA_2048": (256, 214, 190), "RSA_3072": (384, 342, 318), "RSA_4096": (512, 470, 446)}
RSA_ALGORITHMS = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
OPENSSL_MD = {"RSAES_OAEP_SHA_1": "sha1", "RSAES_OAEP_SHA_256": "sha256"}

# KeySpec → (OpenSSL curve name, shared secret length).
ECDH_SPECS = {"ECC_NIST_P256": ("prime256v1", 32), "ECC_NIST_P384": ("secp384r1", 48),
              "ECC_NIST_P521": ("secp521r1", 66)}


@pytest.fixture(scope="module")
def rsa2048(c):
    return c.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]


@pytest.fixture(scope="module")
def p256(c):
    return c.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["KeyId"]


def err(call, *args, **kwargs):
    with pytest.raises(ClientError) as e:
        call(*args, **kwargs)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def openssl(*args, data=None):
    r = subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def peer_key(tmp_path, curve, name="peer"):
    """A fresh EC key pair on `curve`: the private key's PEM path and the public key's DER."""
    pem = tmp_path / f"{name}.pem"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}", "-out", str(pem))
    return pem, openssl("pkey", "-in", str(pem), "-pubout", "-outform", "DER")


def openssl_derive(tmp_path, private_pem, public_der):
    """The ECDH secret openssl derives with our private key and the KMS key's public key."""
    peer = tmp_path / "kms_pub.pem"
    peer.write_bytes(openssl("pkey", "-pubin", "-inform", "DER", "-outform", "PEM", data=public_der))
    return openssl("pkeyutl", "-derive", "-inkey", str(private_pem), "-peerkey", str(peer))


def openssl_encrypt(tmp_path, public_der, algorithm, plaintext):
    """RSA-OAEP encryption by openssl with the key's public key (MGF1 with the same hash)."""
    pub = tmp_path / "rsa_pub.der"
    pub.write_bytes(public_der)
    md = OPENSSL_MD[algorithm]
    return openssl("pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", str(pub),
                   "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{md}",
                   "-pkeyopt", f"rsa_mgf1_md:{md}", data=plaintext)


# --- RSA ENCRYPT_DECRYPT keys ---------------------------------------------------------------------

def test_every_rsa_spec_and_algorithm_round_trips_up_to_aws_limits(c):
    for spec, (modulus, *limits) in RSA_SPECS.items():
        meta = c.create_key(KeySpec=spec, KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
        key = meta["KeyId"]
        assert (meta["KeySpec"], meta["KeyUsage"], meta["EncryptionAlgorithms"]) == \
            (spec, "ENCRYPT_DECRYPT", RSA_ALGORITHMS)
        assert "SigningAlgorithms" not in meta and "KeyAgreementAlgorithms" not in meta
        pub = c.get_public_key(KeyId=key)
        assert (pub["KeyUsage"], pub["EncryptionAlgorithms"], pub["KeySpec"]) == \
            ("ENCRYPT_DECRYPT", RSA_ALGORITHMS, spec)
        assert "SigningAlgorithms" not in pub and "KeyAgreementAlgorithms" not in pub
        for alg, limit in zip(RSA_ALGORITHMS, limits):
            plaintext = os.urandom(limit)
            e = c.encrypt(KeyId=key, Plaintext=plaintext, EncryptionAlgorithm=alg)
            assert (e["KeyId"], e["EncryptionAlgorithm"], len(e["CiphertextBlob"])) == (arn(key), alg, modulus)
            d = c.decrypt(CiphertextBlob=e["CiphertextBlob"], KeyId=key, EncryptionAlgorithm=alg)
            assert (d["Plaintext"], d["KeyId"], d["EncryptionAlgorithm"]) == (plaintext, arn(key), alg)
            assert "KeyMaterialId" not in d
            # RSA-OAEP is randomized: the same plaintext, another ciphertext.
            again = c.encrypt(KeyId=key, Plaintext=plaintext, EncryptionAlgorithm=alg)["CiphertextBlob"]
            assert again != e["CiphertextBlob"]
            code, msg = err(c.encrypt, KeyId=key, Plaintext=os.urandom(limit + 1), EncryptionAlgorithm=alg)
            assert code == "ValidationException" and str(limit) in msg, (spec, alg, msg)


def test_openssl_encrypts_with_the_public_key_and_the_server_decrypts(c, rsa2048, tmp_path):
    der = c.get_public_key(KeyId=rsa2048)["PublicKey"]
    text = openssl("pkey", "-pubin", "-inform", "DER", "-text", "-noout", data=der).decode()
    assert "2048 bit" in text
    for alg in RSA_ALGORITHMS:
        plaintext = b"encrypted offline by openssl " + alg.encode()
        ct = openssl_encrypt(tmp_path, der, alg, plaintext)
        assert len(ct) == 256
        d = c.decrypt(CiphertextBlob=ct, KeyId=rsa2048, EncryptionAlgorithm=alg)
        assert (d["Plaintext"], d["EncryptionAlgorithm"]) == (plaintext, alg)
        other = [a for a in RSA_ALGORITHMS if a != alg][0]
        assert err(c.decrypt, CiphertextBlob=ct, KeyId=rsa2048, EncryptionAlgorithm=other)[0] == \
            "InvalidCiphertextException"


def test_rsa_encryption_error_paths(c, raw, rsa2048):
    aes = c.create_key()["KeyMetadata"]["KeyId"]
    signing = c.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    other = c.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    ct = c.encrypt(KeyId=rsa2048, Plaintext=b"secret", EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    sym_ct = c.encrypt(KeyId=aes, Plaintext=b"secret")["CiphertextBlob"]

    # The algorithm must be one of the key's (the default, SYMMETRIC_DEFAULT, is not an RSA key's).
    assert err(c.encrypt, KeyId=rsa2048, Plaintext=b"x") == \
        ("InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.")
    assert err(c.encrypt, KeyId=rsa2048, Plaintext=b"x", EncryptionAlgorithm="SM2PKE")[0] == \
        "InvalidKeyUsageException"
    assert err(c.encrypt, KeyId=aes, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_1") == \
        ("InvalidKeyUsageException", "Algorithm RSAES_OAEP_SHA_1 is incompatible with key spec SYMMETRIC_DEFAULT.")
    assert err(c.decrypt, CiphertextBlob=ct, KeyId=rsa2048) == \
        ("InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.")
    assert err(c.decrypt, CiphertextBlob=sym_ct, KeyId=aes, EncryptionAlgorithm="RSAES_OAEP_SHA_256")[0] == \
        "InvalidKeyUsageException"
    assert err(c.decrypt, CiphertextBlob=sym_ct, EncryptionAlgorithm="RSAES_OAEP_SHA_256")[0] == \
        "InvalidKeyUsageException"
    assert err(raw.encrypt, KeyId=rsa2048, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_512")[0] == \
        "ValidationException"
    # No encryption context with asymmetric keys.
    assert err(c.encrypt, KeyId=rsa2048, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_1",
               EncryptionContext={"a": "b"})[0] == "ValidationException"
    assert err(c.decrypt, CiphertextBlob=ct, KeyId=rsa2048, EncryptionAlgorithm="RSAES_OAEP_SHA_256",
               EncryptionContext={"a": "b"})[0] == "ValidationException"
    # A raw RSA ciphertext names no key: Decrypt needs the KeyId.
    assert err(c.decrypt, CiphertextBlob=ct, EncryptionAlgorithm="RSAES_OAEP_SHA_256")[0] == \
        "InvalidCiphertextException"
    assert err(c.decrypt, CiphertextBlob=ct)[0] == "InvalidCiphertextException"
    # Another key, a damaged ciphertext, a symmetric one: not decryptable.
    assert err(c.decrypt, CiphertextBlob=ct, KeyId=other, EncryptionAlgorithm="RSAES_OAEP_SHA_256")[0] == \
        "InvalidCiphertextException"
    bad = bytes([ct[0] ^ 1]) + ct[1:]
    assert err(c.decrypt, CiphertextBlob=bad, KeyId=rsa2048, EncryptionAlgorithm="RSAES_OAEP_SHA_256")[0] == \
        "InvalidCiphertextException"
    assert err(c.decrypt, CiphertextBlob=sym_ct, KeyId=rsa2048, EncryptionAlgorithm="RSAES_OAEP_SHA_256")[0] == \
        "InvalidCiphertextException"

    def usage(op, key, key_usage):
        return ("InvalidKeyUsageException", f"{arn(key)} key usage is {key_usage} which is not valid for {op}.")

    # Data keys come from symmetric keys only.
    for op, kwargs in [("generate_data_key", {"KeySpec": "AES_256"}),
                       ("generate_data_key_without_plaintext", {"NumberOfBytes": 32}),
                       ("generate_data_key_pair", {"KeyPairSpec": "ECC_NIST_P256"}),
                       ("generate_data_key_pair_without_plaintext", {"KeyPairSpec": "RSA_2048"})]:
        code, msg = err(getattr(c, op), KeyId=rsa2048, **kwargs)
        assert code == "InvalidKeyUsageException" and arn(rsa2048) in msg and "RSA_2048" in msg, (op, msg)
    # Each usage its operations.
    assert err(c.sign, KeyId=rsa2048, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256") == \
        usage("Sign", rsa2048, "ENCRYPT_DECRYPT")
    assert err(c.verify, KeyId=rsa2048, Message=b"m", Signature=b"s" * 256,
               SigningAlgorithm="RSASSA_PSS_SHA_256") == usage("Verify", rsa2048, "ENCRYPT_DECRYPT")
    assert err(c.generate_mac, KeyId=rsa2048, Message=b"m", MacAlgorithm="HMAC_SHA_256") == \
        usage("GenerateMac", rsa2048, "ENCRYPT_DECRYPT")
    assert err(c.encrypt, KeyId=signing, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256") == \
        usage("Encrypt", signing, "SIGN_VERIFY")
    assert err(c.decrypt, CiphertextBlob=ct, KeyId=signing, EncryptionAlgorithm="RSAES_OAEP_SHA_256") == \
        usage("Decrypt", signing, "SIGN_VERIFY")
    # DryRun: the checks, not the operation.
    assert err(c.encrypt, KeyId=rsa2048, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_1",
               DryRun=True)[0] == "DryRunOperationException"
    assert err(c.decrypt, CiphertextBlob=ct, KeyId=rsa2048, EncryptionAlgorithm="RSAES_OAEP_SHA_256",
               DryRun=True)[0] == "DryRunOperationException"
    # Asymmetric keys do not rotate.
    assert err(c.enable_key_rotation, KeyId=rsa2048)[0] == "UnsupportedOperationException"
    assert err(c.rotate_key_on_demand, KeyId=rsa2048)[0] == "UnsupportedOperationException"
    # The key still works.
    assert c.decrypt(CiphertextBlob=ct, KeyId=rsa2048, EncryptionAlgorithm="RSAES_OAEP_SHA_256")["Plaintext"] == \
        b"secret"


def test_reencrypt_between_symmetric_and_rsa_keys(c, rsa2048):
    aes = c.create_key()["KeyMetadata"]["KeyId"]
    rsa3072 = c.create_key(KeySpec="RSA_3072", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    sym_ct = c.encrypt(KeyId=aes, Plaintext=b"moving secret", EncryptionContext={"app": "x"})["CiphertextBlob"]
    # Symmetric → RSA.
    r = c.re_encrypt(CiphertextBlob=sym_ct, SourceEncryptionContext={"app": "x"}, DestinationKeyId=rsa2048,
                     DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1")
    assert (r["SourceKeyId"], r["KeyId"], r["SourceEncryptionAlgorithm"], r["DestinationEncryptionAlgorithm"]) == \
        (arn(aes), arn(rsa2048), "SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1")
    assert "SourceKeyMaterialId" in r and "DestinationKeyMaterialId" not in r
    rsa_ct = r["CiphertextBlob"]
    assert len(rsa_ct) == 256
    assert c.decrypt(CiphertextBlob=rsa_ct, KeyId=rsa2048, EncryptionAlgorithm="RSAES_OAEP_SHA_1")["Plaintext"] == \
        b"moving secret"
    # RSA → RSA.
    r = c.re_encrypt(CiphertextBlob=rsa_ct, SourceKeyId=rsa2048, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_1",
                     DestinationKeyId=rsa3072, DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert (r["SourceEncryptionAlgorithm"], r["DestinationEncryptionAlgorithm"], len(r["CiphertextBlob"])) == \
        ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", 384)
    # RSA → symmetric.
    r = c.re_encrypt(CiphertextBlob=rsa_ct, SourceKeyId=rsa2048, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_1",
                     DestinationKeyId=aes, DestinationEncryptionContext={"app": "y"})
    assert (r["SourceKeyId"], r["SourceEncryptionAlgorithm"], r["DestinationEncryptionAlgorithm"]) == \
        (arn(rsa2048), "RSAES_OAEP_SHA_1", "SYMMETRIC_DEFAULT")
    assert "SourceKeyMaterialId" not in r and "DestinationKeyMaterialId" in r
    assert c.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"app": "y"})["Plaintext"] == \
        b"moving secret"
    # Errors: the source needs its key and algorithm, the destination an algorithm of its own,
    # no context for RSA keys, and a plaintext the destination can take.
    assert err(c.re_encrypt, CiphertextBlob=rsa_ct, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_1",
               DestinationKeyId=aes)[0] == "InvalidCiphertextException"
    assert err(c.re_encrypt, CiphertextBlob=rsa_ct, SourceKeyId=rsa2048, DestinationKeyId=aes)[0] == \
        "InvalidKeyUsageException"
    assert err(c.re_encrypt, CiphertextBlob=sym_ct, SourceEncryptionContext={"app": "x"},
               DestinationKeyId=rsa2048) == \
        ("InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.")
    assert err(c.re_encrypt, CiphertextBlob=sym_ct, SourceEncryptionContext={"app": "x"}, DestinationKeyId=aes,
               DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")[0] == "InvalidKeyUsageException"
    assert err(c.re_encrypt, CiphertextBlob=sym_ct, SourceEncryptionContext={"app": "x"}, DestinationKeyId=rsa2048,
               DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1", DestinationEncryptionContext={"a": "b"})[0] == \
        "ValidationException"
    assert err(c.re_encrypt, CiphertextBlob=rsa_ct, SourceKeyId=rsa2048, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_1",
               SourceEncryptionContext={"a": "b"}, DestinationKeyId=aes)[0] == "ValidationException"
    big = c.encrypt(KeyId=aes, Plaintext=os.urandom(191))["CiphertextBlob"]
    code, msg = err(c.re_encrypt, CiphertextBlob=big, DestinationKeyId=rsa2048,
                    DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert code == "ValidationException" and "190" in msg
    r = c.re_encrypt(CiphertextBlob=big, DestinationKeyId=rsa2048, DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1")
    assert r["DestinationEncryptionAlgorithm"] == "RSAES_OAEP_SHA_1"


# --- ECC KEY_AGREEMENT keys -----------------------------------------------------------------------

def test_every_curve_derives_the_secret_openssl_derives(c, tmp_path):
    for spec, (curve, length) in ECDH_SPECS.items():
        meta = c.create_key(KeySpec=spec, KeyUsage="KEY_AGREEMENT")["KeyMetadata"]
        key = meta["KeyId"]
        assert (meta["KeyUsage"], meta["KeyAgreementAlgorithms"]) == ("KEY_AGREEMENT", ["ECDH"])
        assert not {"EncryptionAlgorithms", "SigningAlgorithms", "MacAlgorithms"} & set(meta)
        pub = c.get_public_key(KeyId=key)
        assert (pub["KeyUsage"], pub["KeySpec"], pub["KeyAgreementAlgorithms"]) == ("KEY_AGREEMENT", spec, ["ECDH"])
        assert "SigningAlgorithms" not in pub and "EncryptionAlgorithms" not in pub
        text = openssl("pkey", "-pubin", "-inform", "DER", "-text", "-noout", data=pub["PublicKey"]).decode()
        assert {"prime256v1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[curve] in text
        pem, peer_der = peer_key(tmp_path, curve)
        r = c.derive_shared_secret(KeyId=key, KeyAgreementAlgorithm="ECDH", PublicKey=peer_der)
        assert (r["KeyId"], r["KeyAgreementAlgorithm"], r["KeyOrigin"]) == (arn(key), "ECDH", "AWS_KMS")
        assert len(r["SharedSecret"]) == length
        assert r["SharedSecret"] == openssl_derive(tmp_path, pem, pub["PublicKey"]), spec
        # The same peer, the same secret; another peer, another secret.
        assert c.derive_shared_secret(KeyId=key, KeyAgreementAlgorithm="ECDH",
                                      PublicKey=peer_der)["SharedSecret"] == r["SharedSecret"]
        _, other_der = peer_key(tmp_path, curve, "other")
        assert c.derive_shared_secret(KeyId=key, KeyAgreementAlgorithm="ECDH",
                                      PublicKey=other_der)["SharedSecret"] != r["SharedSecret"]


def test_key_agreement_error_paths(c, raw, p256, rsa2048, tmp_path):
    _, p384_der = peer_key(tmp_path, "secp384r1", "p384")
    _, p256_der = peer_key(tmp_path, "prime256v1", "p256")
    signing = c.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    aes = c.create_key()["KeyMetadata"]["KeyId"]

    def derive(key=p256, public_key=p256_der, client=c, **kwargs):
        return err(client.derive_shared_secret, KeyId=key, KeyAgreementAlgorithm="ECDH", PublicKey=public_key,
                   **kwargs)

    # The peer's key: a DER SubjectPublicKeyInfo on the key's curve.
    assert derive(public_key=p384_der)[0] == "ValidationException"
    assert derive(public_key=b"not a public key")[0] == "ValidationException"
    assert derive(public_key=p256_der[-65:])[0] == "ValidationException", "a bare point is not an SPKI"
    assert derive(public_key=c.get_public_key(KeyId=rsa2048)["PublicKey"])[0] == "ValidationException"
    # Members.
    assert err(raw.derive_shared_secret, KeyId=p256, KeyAgreementAlgorithm="ECMQV", PublicKey=p256_der)[0] == \
        "ValidationException"
    assert err(raw.derive_shared_secret, KeyId=p256, PublicKey=p256_der)[0] == "ValidationException"
    assert derive(Recipient={"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                             "AttestationDocument": b"doc"})[0] == "UnsupportedOperationException"
    assert derive(key="alias/no-such-key")[0] == "NotFoundException"
    # Key usages: DeriveSharedSecret needs KEY_AGREEMENT, and KEY_AGREEMENT keys do nothing else.
    for key, key_usage in [(signing, "SIGN_VERIFY"), (aes, "ENCRYPT_DECRYPT"), (rsa2048, "ENCRYPT_DECRYPT")]:
        assert derive(key=key) == ("InvalidKeyUsageException",
                                   f"{arn(key)} key usage is {key_usage} which is not valid for DeriveSharedSecret.")
    msg = f"{arn(p256)} key usage is KEY_AGREEMENT which is not valid for"
    assert err(c.sign, KeyId=p256, Message=b"m", SigningAlgorithm="ECDSA_SHA_256") == \
        ("InvalidKeyUsageException", f"{msg} Sign.")
    assert err(c.encrypt, KeyId=p256, Plaintext=b"m") == ("InvalidKeyUsageException", f"{msg} Encrypt.")
    assert err(c.generate_data_key, KeyId=p256, KeySpec="AES_256")[0] == "InvalidKeyUsageException"
    assert derive(DryRun=True)[0] == "DryRunOperationException"
    # Key states: as for every cryptographic operation.
    state_key = c.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["KeyId"]
    c.disable_key(KeyId=state_key)
    assert derive(key=state_key) == ("DisabledException", f"{arn(state_key)} is disabled.")
    c.enable_key(KeyId=state_key)
    c.schedule_key_deletion(KeyId=state_key, PendingWindowInDays=7)
    code, msg = derive(key=state_key)
    assert code == "KMSInvalidStateException" and arn(state_key) in msg
    assert err(c.get_public_key, KeyId=state_key)[0] == "KMSInvalidStateException"
    c.cancel_key_deletion(KeyId=state_key)
    c.enable_key(KeyId=state_key)
    assert len(c.derive_shared_secret(KeyId=state_key, KeyAgreementAlgorithm="ECDH",
                                      PublicKey=p256_der)["SharedSecret"]) == 32
    assert err(c.enable_key_rotation, KeyId=state_key)[0] == "UnsupportedOperationException"


def test_key_policies_and_grants_cover_the_new_operations(srv, c, tmp_path):
    # The key policies name only the admin: the app may use the keys through grants only.
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]})
    ecdh = c.create_key(KeySpec="ECC_NIST_P384", KeyUsage="KEY_AGREEMENT", Policy=policy)["KeyMetadata"]["KeyId"]
    rsa = c.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT", Policy=policy)["KeyMetadata"]["KeyId"]
    _, peer = peer_key(tmp_path, "secp384r1")
    app = srv.client(APP_AKID, APP_SECRET)
    code, msg = err(app.derive_shared_secret, KeyId=ecdh, KeyAgreementAlgorithm="ECDH", PublicKey=peer)
    assert code == "AccessDeniedException"
    assert msg.startswith(f"User: {APP} is not authorized to perform: kms:DeriveSharedSecret on resource: {arn(ecdh)}")
    ct = c.encrypt(KeyId=rsa, Plaintext=b"for the app", EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    code, msg = err(app.decrypt, CiphertextBlob=ct, KeyId=rsa, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert code == "AccessDeniedException" and "kms:Decrypt" in msg
    # Grant operations follow the key's type.
    assert err(c.create_grant, KeyId=ecdh, GranteePrincipal=APP, Operations=["Sign"])[0] == "ValidationException"
    assert err(c.create_grant, KeyId=ecdh, GranteePrincipal=APP, Operations=["DeriveSharedSecret"],
               Constraints={"EncryptionContextSubset": {"a": "b"}})[0] == "ValidationException"
    assert err(c.create_grant, KeyId=rsa, GranteePrincipal=APP, Operations=["GenerateDataKey"])[0] == \
        "ValidationException"
    g = c.create_grant(KeyId=ecdh, GranteePrincipal=APP, Operations=["DeriveSharedSecret", "GetPublicKey"])
    secret = app.derive_shared_secret(KeyId=ecdh, KeyAgreementAlgorithm="ECDH", PublicKey=peer)["SharedSecret"]
    assert secret == c.derive_shared_secret(KeyId=ecdh, KeyAgreementAlgorithm="ECDH", PublicKey=peer)["SharedSecret"]
    assert app.get_public_key(KeyId=ecdh)["KeyAgreementAlgorithms"] == ["ECDH"]
    assert err(app.describe_key, KeyId=ecdh)[0] == "AccessDeniedException", "not granted"
    c.create_grant(KeyId=rsa, GranteePrincipal=APP, Operations=["Decrypt", "Encrypt"])
    assert app.decrypt(CiphertextBlob=ct, KeyId=rsa, EncryptionAlgorithm="RSAES_OAEP_SHA_256")["Plaintext"] == \
        b"for the app"
    c.revoke_grant(KeyId=ecdh, GrantId=g["GrantId"])
    assert err(app.derive_shared_secret, KeyId=ecdh, KeyAgreementAlgorithm="ECDH", PublicKey=peer)[0] == \
        "AccessDeniedException"
    # An explicit Deny in the key policy wins over the admin's Allow.
    deny = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "no ecdh", "Effect": "Deny", "Principal": {"AWS": ADMIN}, "Action": "kms:DeriveSharedSecret",
         "Resource": "*"}]})
    c.put_key_policy(KeyId=ecdh, PolicyName="default", Policy=deny)
    code, msg = err(c.derive_shared_secret, KeyId=ecdh, KeyAgreementAlgorithm="ECDH", PublicKey=peer)
    assert code == "AccessDeniedException" and "explicit deny" in msg


def test_audit_records_never_show_the_secret_or_the_peer_key(srv, c, p256, rsa2048, tmp_path):
    _, peer = peer_key(tmp_path, "prime256v1")
    secret = c.derive_shared_secret(KeyId=p256, KeyAgreementAlgorithm="ECDH", PublicKey=peer)["SharedSecret"]
    plaintext = b"audit-must-not-show-this-plaintext-42"
    ct = c.encrypt(KeyId=rsa2048, Plaintext=plaintext, EncryptionAlgorithm="RSAES_OAEP_SHA_1")["CiphertextBlob"]
    c.decrypt(CiphertextBlob=ct, KeyId=rsa2048, EncryptionAlgorithm="RSAES_OAEP_SHA_1")
    want = {"DeriveSharedSecret": {"keyId": p256, "keyAgreementAlgorithm": "ECDH"},
            "Decrypt": {"keyId": rsa2048, "encryptionAlgorithm": "RSAES_OAEP_SHA_1"}}
    # Records of cryptographic calls are written in groups, soon after the answer.
    deadline = time.monotonic() + 10
    while True:
        text = open(os.path.join(srv.dir, "data", "audit.log")).read()
        recs = [json.loads(line) for line in text.splitlines() if line.strip()]
        found = {op: [r for r in recs if r.get("eventName") == op and r.get("requestParameters") == params]
                 for op, params in want.items()}
        if all(found.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for s in (secret, peer, plaintext, ct):
        assert base64.b64encode(s).decode() not in text
    assert plaintext.decode() not in text
    r = found["DeriveSharedSecret"][-1]
    assert r["readOnly"] is True and r.get("responseElements") is None
    assert r["resources"][0]["ARN"] == arn(p256)
    assert found["Decrypt"], "the RSA Decrypt record, with its algorithm"


def test_aws_cli_encrypts_decrypts_and_derives(srv, tmp_path):
    aws = srv.aws

    rsa = json.loads(aws("create-key", "--key-spec", "RSA_3072", "--key-usage", "ENCRYPT_DECRYPT").stdout)
    rsa = rsa["KeyMetadata"]
    assert rsa["EncryptionAlgorithms"] == RSA_ALGORITHMS
    msg = tmp_path / "message"
    msg.write_bytes(b"encrypted by the aws cli")
    out = json.loads(aws("encrypt", "--key-id", rsa["KeyId"], "--plaintext", f"fileb://{msg}",
                         "--encryption-algorithm", "RSAES_OAEP_SHA_256").stdout)
    ct = tmp_path / "ct"
    ct.write_bytes(base64.b64decode(out["CiphertextBlob"]))
    assert len(ct.read_bytes()) == 384
    out = json.loads(aws("decrypt", "--key-id", rsa["Arn"], "--ciphertext-blob", f"fileb://{ct}",
                         "--encryption-algorithm", "RSAES_OAEP_SHA_256").stdout)
    assert base64.b64decode(out["Plaintext"]) == b"encrypted by the aws cli"
    r = aws("decrypt", "--ciphertext-blob", f"fileb://{ct}", "--encryption-algorithm", "RSAES_OAEP_SHA_256",
            check=False)
    assert r.returncode != 0 and "InvalidCiphertextException" in r.stderr

    key = json.loads(aws("create-key", "--key-spec", "ECC_NIST_P521", "--key-usage", "KEY_AGREEMENT").stdout)
    key = key["KeyMetadata"]["KeyId"]
    pem, peer_der = peer_key(tmp_path, "secp521r1")
    (tmp_path / "peer.der").write_bytes(peer_der)
    out = json.loads(aws("derive-shared-secret", "--key-id", key, "--key-agreement-algorithm", "ECDH",
                         "--public-key", f"fileb://{tmp_path / 'peer.der'}").stdout)
    assert out["KeyAgreementAlgorithm"] == "ECDH" and out["KeyOrigin"] == "AWS_KMS"
    kms_pub = base64.b64decode(json.loads(aws("get-public-key", "--key-id", key).stdout)["PublicKey"])
    assert base64.b64decode(out["SharedSecret"]) == openssl_derive(tmp_path, pem, kms_pub)


def test_rsa_and_ecdh_keys_survive_a_restart(tmp_path):
    s = Server()
    try:
        c = s.client()
        rsa = c.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
        ecdh = c.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["KeyId"]
        ct = c.encrypt(KeyId=rsa, Plaintext=b"kept", EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
        _, peer = peer_key(tmp_path, "prime256v1")
        secret = c.derive_shared_secret(KeyId=ecdh, KeyAgreementAlgorithm="ECDH", PublicKey=peer)["SharedSecret"]
        s.stop()
        s.start()
        c = s.client()
        assert c.decrypt(CiphertextBlob=ct, KeyId=rsa, EncryptionAlgorithm="RSAES_OAEP_SHA_256")["Plaintext"] == \
            b"kept"
        assert c.derive_shared_secret(KeyId=ecdh, KeyAgreementAlgorithm="ECDH",
                                      PublicKey=peer)["SharedSecret"] == secret
        assert c.describe_key(KeyId=ecdh)["KeyMetadata"]["KeyUsage"] == "KEY_AGREEMENT"
    finally:
        s.stop()
        shutil.rmtree(s.dir, ignore_errors=True)
