"""`envelope kms serve` over HTTPS with the real aws CLI and boto3, and the listen-address rules."""

import os
import pathlib
import subprocess
import sys

import boto3
import pytest
from botocore.config import Config


from harness import envelope_bin, free_port, wait_listening
from test_kms_audit import AKID, PRINCIPAL, SECRET, _stop


def _openssl(args, cwd):
    subprocess.run(["openssl"] + args, cwd=cwd, check=True, capture_output=True)


def _certs(d):
    with open(os.path.join(d, "san.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=envelope-test-ca"], d)
    _openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"], d)
    _openssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
              "-out", "server.crt", "-days", "2", "-extfile", "san.cnf"], d)
    return [os.path.join(d, x) for x in ("ca.crt", "server.crt", "server.key")]


def _serve(d, extra):
    creds = os.path.join(d, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n  principal: {PRINCIPAL}\n")
    os.chmod(creds, 0o600)
    return subprocess.Popen(
        [envelope_bin(), "kms", "serve", "--http-addr", "off", "--data-dir", os.path.join(d, "data"),
         "--credentials", creds] + extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _serve_tls(d):
    """Starts `envelope kms serve` over HTTPS with a fresh CA; returns (process, port, CA file)."""
    ca, cert, key = _certs(d)
    port = free_port()
    p = _serve(d, ["--listen", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key])
    wait_listening(p, port)
    return p, port, ca


def test_https_with_boto3_and_aws_cli(tmp_path):
    p, port, ca = _serve_tls(str(tmp_path))
    try:
        kms = boto3.client("kms", endpoint_url=f"https://127.0.0.1:{port}", region_name="us-east-1",
                           aws_access_key_id=AKID, aws_secret_access_key=SECRET, verify=ca,
                           config=Config(retries={"max_attempts": 1}))
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        ct = kms.encrypt(KeyId=key_id, Plaintext=b"over tls")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"over tls"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
                    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
        aws = str(pathlib.Path(sys.executable).parent / "aws")
        out = subprocess.run([aws, "--endpoint-url", f"https://127.0.0.1:{port}", "--ca-bundle", ca, "kms",
                              "describe-key", "--key-id", key_id, "--query", "KeyMetadata.KeyState", "--output", "text"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "Enabled"
        # A client that does not trust the CA is refused by TLS itself.
        untrusting = boto3.client("kms", endpoint_url=f"https://127.0.0.1:{port}", region_name="us-east-1",
                                  aws_access_key_id=AKID, aws_secret_access_key=SECRET,
                                  config=Config(retries={"max_attempts": 1}))
        with pytest.raises(Exception) as e:
            untrusting.list_keys()
        assert "SSL" in type(e.value).__name__ or "certificate" in str(e.value).lower()
    finally:
        _stop(p)


def test_plain_http_only_on_loopback_unless_forced(tmp_path):
    d = str(tmp_path)
    p = _serve(d, ["--listen", f"0.0.0.0:{free_port()}"])
    assert p.wait(timeout=20) == 64
    assert b"--tls-cert" in p.stderr.read()
    ca, cert, key = _certs(d)
    bad = os.path.join(d, "garbage.pem")
    open(bad, "w").write("not a certificate")
    p = _serve(d, ["--listen", f"127.0.0.1:{free_port()}", "--tls-cert", bad, "--tls-key", key])
    assert p.wait(timeout=20) == 64
