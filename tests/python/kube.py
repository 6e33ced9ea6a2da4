"""A real etcd and kube-apiserver on loopback (built from Go modules by scripts/kube-peers), and
`envelope plugin` processes whose printed EncryptionConfiguration is what kube-apiserver gets.

Nothing here is mocked: kubectl talks to kube-apiserver, kube-apiserver to the plugin's socket
and to etcd; tests read etcd's raw values through its JSON gateway. A peer that cannot be found
or started fails the test with the reason.
"""

import base64
import json
import os
import signal
import ssl
import subprocess
import urllib.error
import urllib.request

from harness import ROOT, envelope_bin, free_port, wait_for

PEERS = ("etcd", "etcdctl", "kube-apiserver", "kubectl")


def peers_bin():
    """The directory of etcd, etcdctl, kube-apiserver and kubectl built by scripts/kube-peers."""
    b = os.environ.get("KUBE_PEERS_BIN")
    env = ROOT / "target" / "kube-peers.env"
    if not b and env.exists():
        for line in env.read_text().splitlines():
            if line.startswith("KUBE_PEERS_BIN="):
                b = line.split("=", 1)[1]
    assert b, "no KUBE_PEERS_BIN: run scripts/kube-peers (scripts/test does) to build kube-apiserver, kubectl and etcd"
    for p in PEERS:
        assert os.access(os.path.join(b, p), os.X_OK), f"{p} missing in {b}: run scripts/kube-peers"
    return b


def _tail(path, n=40):
    try:
        return "".join(open(path, errors="replace").readlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(p, sig=signal.SIGTERM, timeout=30):
    if p is None or p.poll() is not None:
        return p.returncode if p else None
    p.send_signal(sig)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"pid {p.pid} did not stop within {timeout}s of signal {sig}")


class Etcd:
    """A single-member etcd 3.6 server; raw values are read through its gRPC JSON gateway."""

    def __init__(self, workdir):
        self.dir = workdir
        self.port, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(workdir, "etcd.log")
        self.proc = subprocess.Popen(
            [os.path.join(peers_bin(), "etcd"), "--name=envelope-e2e", f"--data-dir={workdir}/etcd-data",
             f"--listen-client-urls={self.url}", f"--advertise-client-urls={self.url}",
             f"--listen-peer-urls=http://127.0.0.1:{peer}", "--unsafe-no-fsync"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT)

        def ready():
            assert self.proc.poll() is None, f"etcd exited:\n{_tail(self.log)}"
            return "etcd ready:" in open(self.log, errors="replace").read()

        wait_for(ready, 60, "etcd to start")

    def _post(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def get(self, key):
        """The raw stored value of `key`, or None."""
        r = self._post("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})
        kvs = r.get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def keys(self, prefix):
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        r = self._post("/v3/kv/range", {"key": base64.b64encode(prefix.encode()).decode(),
                                        "range_end": base64.b64encode(end.encode()).decode(), "keys_only": True})
        return sorted(base64.b64decode(kv["key"]).decode() for kv in r.get("kvs") or [])

    def stop(self):
        _stop(self.proc)


class ApiServer:
    """kube-apiserver on loopback against `etcd`, with a static admin token and self-signed TLS."""

    def __init__(self, workdir, etcd):
        self.dir, self.etcd = workdir, etcd
        self.proc = None
        pki = os.path.join(workdir, "pki")
        os.makedirs(pki, exist_ok=True)
        self.cert, self.key = os.path.join(pki, "serving.crt"), os.path.join(pki, "serving.key")
        self.ca, ca_key = os.path.join(pki, "ca.crt"), os.path.join(pki, "ca.key")
        csr, ext = os.path.join(pki, "serving.csr"), os.path.join(pki, "serving.ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
                    "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        self.sa_key, self.sa_pub = os.path.join(pki, "sa.key"), os.path.join(pki, "sa.pub")
        # A CA and a serving certificate it signed (clients such as rustls refuse a CA certificate
        # used as the server's own).
        for cmd in (
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=envelope-e2e-ca", "-keyout", ca_key, "-out", self.ca],
            ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", "/CN=kube-apiserver", "-keyout", self.key, "-out", csr],
            ["openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
             "-extfile", ext, "-out", self.cert],
            ["openssl", "genrsa", "-out", self.sa_key, "2048"],
            ["openssl", "rsa", "-in", self.sa_key, "-pubout", "-out", self.sa_pub],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        self.token = base64.b16encode(os.urandom(24)).decode().lower()
        self.tokens = os.path.join(pki, "tokens.csv")
        with open(self.tokens, "w") as f:
            f.write(f'{self.token},admin,admin,"system:masters"\n')
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.enc_path = os.path.join(workdir, "encryption-config.yaml")
        self.kubeconfig = os.path.join(workdir, "kubeconfig")
        with open(self.kubeconfig, "w") as f:
            f.write(f"""apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {self.url}
    certificate-authority: {self.ca}
users:
- name: admin
  user:
    token: {self.token}
contexts:
- name: e2e
  context: {{cluster: e2e, user: admin}}
current-context: e2e
""")
        self.log = os.path.join(workdir, "kube-apiserver.log")
        self.starts = 0

    def start(self, encryption_config=None, extra=()):
        """Starts kube-apiserver (with this EncryptionConfiguration text, if given) and waits for /readyz."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        args = [os.path.join(peers_bin(), "kube-apiserver"),
                f"--etcd-servers={self.etcd.url}", "--bind-address=127.0.0.1", f"--secure-port={self.port}",
                f"--tls-cert-file={self.cert}", f"--tls-private-key-file={self.key}", f"--token-auth-file={self.tokens}",
                "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={self.sa_pub}", f"--service-account-signing-key-file={self.sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24", *extra]
        if encryption_config is not None:
            with open(self.enc_path, "w") as f:
                f.write(encryption_config)
            args.append(f"--encryption-provider-config={self.enc_path}")
        self.starts += 1
        self.proc = subprocess.Popen(args, stdout=open(f"{self.log}.{self.starts}", "w"), stderr=subprocess.STDOUT)

        def ready():
            assert self.proc.poll() is None, f"kube-apiserver exited:\n{_tail(f'{self.log}.{self.starts}')}"
            return self.readyz() == (200, "ok")

        wait_for(ready, 120, "kube-apiserver /readyz")

    def stop(self):
        _stop(self.proc, timeout=60)

    def restart(self, encryption_config=None, extra=()):
        self.stop()
        self.start(encryption_config, extra)

    def readyz(self, check=""):
        ctx = ssl.create_default_context(cafile=self.ca)
        req = urllib.request.Request(f"{self.url}/readyz{'/' + check if check else ''}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                return r.status, r.read().decode().strip()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode().strip()
        except OSError as e:
            return 0, str(e)

    def kubectl(self, *args, input=None, check=True, timeout=90):
        r = subprocess.run([os.path.join(peers_bin(), "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
                           input=input, capture_output=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr.decode(errors='replace')}"
        return r

    # --- Secrets --------------------------------------------------------------------------------

    def create_secret(self, ns, name, value, check=True):
        path = os.path.join(self.dir, f"value-{ns}-{name}")
        with open(path, "wb") as f:
            f.write(value)
        return self.kubectl("create", "secret", "generic", name, "-n", ns, f"--from-file=data={path}", check=check)

    def read_secret(self, ns, name):
        r = self.kubectl("get", "secret", name, "-n", ns, "-o", "jsonpath={.data.data}")
        return base64.b64decode(r.stdout)

    def secret_names(self):
        r = self.kubectl("get", "secrets", "-A", "-o", "json")
        return sorted((i["metadata"]["namespace"], i["metadata"]["name"]) for i in json.loads(r.stdout)["items"])


def kms_v2(raw):
    """(provider name, key_id) of a KMS v2 value `k8s:enc:kms:v2:<name>:<EncryptedObject>`."""
    prefix = b"k8s:enc:kms:v2:"
    assert raw.startswith(prefix), raw[:40]
    name, _, body = raw[len(prefix):].partition(b":")
    # EncryptedObject: field 2 (keyID) is a length-delimited string; walk the fields.
    i, key_id = 0, None
    while i < len(body):
        tag, i = _varint(body, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, i = _varint(body, i)
        elif wire == 2:
            n, i = _varint(body, i)
            if field == 2:
                key_id = body[i:i + n].decode()
            i += n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return name.decode(), key_id


def _varint(b, i):
    shift = value = 0
    while True:
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def encryption_config(providers):
    """An EncryptionConfiguration for Secrets from provider entries printed by plugins (in order)."""
    head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n      - secrets\n    providers:\n"
    return head + "".join(providers) + "      - identity: {}\n"


class Plugin:
    """`envelope plugin` with `args`; its stdout (banner and EncryptionConfiguration) is kept."""

    def __init__(self, workdir, args, name="plugin", env=None):
        self.dir, self.args, self.name, self.env = workdir, list(args), name, env
        self.proc = None
        self.start()

    def start(self):
        self.out = os.path.join(self.dir, f"{self.name}.out")
        self.err = os.path.join(self.dir, f"{self.name}.err")
        self.proc = subprocess.Popen([envelope_bin(), "plugin", *self.args], stdout=open(self.out, "w"),
                                     stderr=open(self.err, "a"), env=self.env)

        def printed():
            assert self.proc.poll() is None, f"plugin exited {self.proc.returncode}:\n{_tail(self.err)}"
            return "      - identity: {}" in open(self.out).read()

        wait_for(printed, 60, f"plugin {self.name} to print its EncryptionConfiguration")

    def config(self):
        text = open(self.out).read()
        start = text.index("apiVersion: apiserver.config.k8s.io/v1")
        end = text.index("      - identity: {}", start) + len("      - identity: {}\n")
        return text[start:end]

    def providers(self):
        """The `- kms:` entries of the printed configuration, each as its text."""
        body = self.config().split("    providers:\n", 1)[1]
        entries = body.split("      - ")
        return ["      - " + e for e in entries if e.startswith("kms:")]

    def stop(self, sig=signal.SIGTERM):
        rc = _stop(self.proc, sig)
        if sig == signal.SIGTERM:
            assert rc == 0, f"plugin exited {rc}:\n{_tail(self.err)}"

    def restart(self, args=None, sig=signal.SIGTERM):
        self.stop(sig)
        if args is not None:
            self.args = list(args)
        self.start()
