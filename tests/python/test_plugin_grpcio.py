"""Wire compatibility of `envelope plugin` with an independent gRPC implementation (grpcio,
C-core), including the HTTP/2 :authority values kube-apiserver's clients really send."""

import re
import time
import urllib.parse
import urllib.request

import grpc
import pytest

AUTHORITIES = ["localhost", "raw-socket-path", "percent-encoded-socket-path"]


def channel(sock, authority):
    if authority == "localhost":
        opts = [("grpc.default_authority", "localhost")]
    elif authority == "raw-socket-path":
        # What grpc-go sends when no authority override is set (kube-apiserver KMS v1, v2 < 1.32).
        opts = [("grpc.default_authority", sock)]
    else:
        opts = [("grpc.default_authority", urllib.parse.quote(sock, safe=""))]
    return grpc.insecure_channel(f"unix://{sock}", options=opts)


@pytest.mark.parametrize("authority", AUTHORITIES)
def test_v2_status_encrypt_decrypt(stubs, plugin, authority):
    v2, v2g = stubs["v2"], stubs["v2_grpc"]
    with channel(plugin["socket"], authority) as ch:
        c = v2g.KeyManagementServiceStub(ch)
        st = c.Status(v2.StatusRequest(), timeout=3)
        assert st.version == "v2beta1"
        assert st.healthz == "ok"
        assert 0 < len(st.key_id) <= 1024
        seed = bytes(range(32))
        e = c.Encrypt(v2.EncryptRequest(plaintext=seed, uid="py-uid-1"), timeout=3)
        assert e.key_id == st.key_id
        assert 0 < len(e.ciphertext) <= 1024
        d = c.Decrypt(v2.DecryptRequest(ciphertext=e.ciphertext, uid="py-uid-2", key_id=e.key_id,
                                        annotations=dict(e.annotations)), timeout=3)
        assert d.plaintext == seed


@pytest.mark.parametrize("authority", AUTHORITIES)
def test_v1beta1_version_encrypt_decrypt(stubs, plugin, authority):
    v1, v1g = stubs["v1"], stubs["v1_grpc"]
    with channel(plugin["socket"], authority) as ch:
        c = v1g.KeyManagementServiceStub(ch)
        v = c.Version(v1.VersionRequest(version="v1beta1"), timeout=3)
        assert v.version == "v1beta1"
        ping = c.Encrypt(v1.EncryptRequest(version="v1beta1", plain=b"ping"), timeout=3)
        assert c.Decrypt(v1.DecryptRequest(version="v1beta1", cipher=ping.cipher), timeout=3).plain == b"ping"
        dek = b"\x11" * 32
        e = c.Encrypt(v1.EncryptRequest(version="v1beta1", plain=dek), timeout=3)
        assert c.Decrypt(v1.DecryptRequest(version="v1beta1", cipher=e.cipher), timeout=3).plain == dek


@pytest.mark.parametrize("authority", AUTHORITIES)
def test_errors_carry_specific_codes(stubs, plugin, authority):
    v2, v2g, v1, v1g = stubs["v2"], stubs["v2_grpc"], stubs["v1"], stubs["v1_grpc"]
    with channel(plugin["socket"], authority) as ch:
        c = v2g.KeyManagementServiceStub(ch)
        e = c.Encrypt(v2.EncryptRequest(plaintext=b"\x01" * 32, uid="u"), timeout=3)
        with pytest.raises(grpc.RpcError) as err:
            c.Decrypt(v2.DecryptRequest(ciphertext=e.ciphertext, uid="u", key_id="someone-else",
                                        annotations=dict(e.annotations)), timeout=3)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "key_id" in err.value.details()
        tampered = bytearray(e.ciphertext)
        tampered[-1] ^= 1
        with pytest.raises(grpc.RpcError) as err:
            c.Decrypt(v2.DecryptRequest(ciphertext=bytes(tampered), uid="u", key_id=e.key_id,
                                        annotations=dict(e.annotations)), timeout=3)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            c.Encrypt(v2.EncryptRequest(plaintext=b"", uid="u"), timeout=3)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        c1 = v1g.KeyManagementServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            c1.Encrypt(v1.EncryptRequest(version="v2", plain=b"x" * 32), timeout=3)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_many_requests_on_one_connection_with_changing_deadlines(stubs, plugin):
    """Each request carries a different grpc-timeout (a fresh HPACK literal), like kube-apiserver."""
    v2, v2g = stubs["v2"], stubs["v2_grpc"]
    with channel(plugin["socket"], "raw-socket-path") as ch:
        c = v2g.KeyManagementServiceStub(ch)
        for i in range(300):
            seed = i.to_bytes(4, "big") * 8
            e = c.Encrypt(v2.EncryptRequest(plaintext=seed, uid=f"u{i}"), timeout=2 + i / 1000)
            d = c.Decrypt(v2.DecryptRequest(ciphertext=e.ciphertext, uid=f"d{i}", key_id=e.key_id,
                                            annotations=dict(e.annotations)), timeout=3 - i / 1000)
            assert d.plaintext == seed


def _rewrites(plugin):
    body = urllib.request.urlopen(f"http://127.0.0.1:{plugin['http_port']}/metrics", timeout=5).read().decode()
    m = re.search(r"^envelope_plugin_authority_rewrites_total (\d+)", body, re.M)
    assert m, body
    return int(m.group(1))


@pytest.mark.parametrize("authority,rewritten", [("localhost", False), ("raw-socket-path", True),
                                                 ("percent-encoded-socket-path", True)])
def test_invalid_authority_really_reaches_the_plugin_and_is_rewritten(stubs, plugin, authority, rewritten):
    """Proves the client sent what we think it sent: the adapter counts each rewrite."""
    v2, v2g = stubs["v2"], stubs["v2_grpc"]
    # Rewrites are counted when a connection closes; let connections of earlier tests finish
    # closing first, so they are not attributed to this one.
    before = _rewrites(plugin)
    while True:
        time.sleep(0.3)
        now = _rewrites(plugin)
        if now == before:
            break
        before = now
    with channel(plugin["socket"], authority) as ch:
        c = v2g.KeyManagementServiceStub(ch)
        for _ in range(5):
            assert c.Status(v2.StatusRequest(), timeout=3).healthz == "ok"
    # Counted when the connection closes.
    deadline = time.time() + 5
    while time.time() < deadline and rewritten and _rewrites(plugin) - before < 5:
        time.sleep(0.05)
    delta = _rewrites(plugin) - before
    if rewritten:
        assert delta >= 5
    else:
        assert delta == 0
