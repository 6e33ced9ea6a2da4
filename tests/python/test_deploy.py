"""The deployment artefacts in deploy/ (and the Dockerfile) do what they say.

- Kubernetes: the plugin's static Pod has the fields a control-plane node needs and passes
  `kubectl apply --dry-run=server` on a real kube-apiserver; the kubeadm patch, applied to a
  kubeadm kube-apiserver manifest with `kubectl patch --local`, gives it the EncryptionConfiguration
  and the socket directory, and the result passes the same dry run; every EncryptionConfiguration
  example is, to the byte, what `envelope plugin` prints with the command in its header; the v2
  example loads into kube-apiserver, and the migration stages keep every Secret readable.
- systemd: both units score at most 2.0 ("OK") with `systemd-analyze security --offline=true`,
  pass `systemd-analyze verify` (ExecStart pointed at the binary under test), and their command
  lines with deploy/plugin.yaml and deploy/envelope-kms.env start the binary for real — under the
  kernel's memory-deny-write-execute (prctl PR_SET_MDWE, what MemoryDenyWriteExecute=yes
  enforces with seccomp). systemd is not PID 1 here, so the units themselves are not started and
  SystemCallFilter= is not exercised.
- Prometheus and Grafana: the rules pass `promtool check rules` and their unit tests; every
  metric name in the rules and the dashboard is one a running plugin and key server expose;
  every dashboard expression parses.
- Dockerfile: the static binary, built the way the Dockerfile builds it (debug profile, its own
  target directory: a second full build, minutes), is statically linked and serves; buildah
  builds the image's `prebuilt` stage from it offline (the `build` stage needs the rust image
  from a registry, which is out of reach here) and the image runs it as UID 65532.

Tools scripts/test installs (promtool, buildah, file, systemd-analyze) fail the test when
missing; the Kubernetes peers come from scripts/kube-peers like the other cluster tests.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
import yaml

from harness import ROOT, envelope_bin, free_port, wait_for
from kube import Plugin, kms_v2

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
ENC = K8S / "encryption-config"
POD = K8S / "envelope-plugin.static-pod.yaml"
KUBEADM_PATCH = K8S / "kubeadm" / "kube-apiserver+json.yaml"
UNITS = [DEPLOY / "envelope-plugin.service", DEPLOY / "envelope-kms.service"]
ALERTS = DEPLOY / "prometheus" / "envelope-alerts.yaml"
ALERT_TESTS = [DEPLOY / "prometheus" / "envelope-alerts.test.yaml",
               DEPLOY / "prometheus" / "envelope-alerts-rotation.test.yaml"]
DASHBOARD = DEPLOY / "grafana" / "envelope-dashboard.json"
DOCKERFILE = ROOT / "Dockerfile"
STATIC_TARGET = "x86_64-unknown-linux-gnu"


def tool(name):
    """A tool scripts/test installs: its path, or the test fails saying so."""
    path = shutil.which(name)
    assert path, f"{name} is missing: scripts/test installs it (apt)"
    return path


def load(path):
    return yaml.safe_load(path.read_text())


def http_get(port, path, timeout=5):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


def short_tmp():
    """A directory with a short path (Unix socket paths are limited to 107 bytes)."""
    return tempfile.mkdtemp(prefix="envdeploy-")


def plugin_yaml_for(workdir, http_port):
    """deploy/plugin.yaml with its socket and data directory moved into workdir and its HTTP port
    free; everything else as shipped."""
    conf = load(DEPLOY / "plugin.yaml")
    conf["socket"] = os.path.join(workdir, "run", os.path.basename(conf["socket"]))
    conf["data-dir"] = os.path.join(workdir, "data")
    conf["http-addr"] = f"127.0.0.1:{http_port}"
    os.makedirs(os.path.join(workdir, "run"), exist_ok=True)
    path = os.path.join(workdir, "plugin.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(conf, f)
    return path, conf


# --- the static Pod ------------------------------------------------------------------------------

def test_static_pod_has_what_a_control_plane_node_needs():
    pod = load(POD)
    plugin_conf = load(DEPLOY / "plugin.yaml")
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert pod["metadata"]["namespace"] == "kube-system"
    spec = pod["spec"]
    # The health endpoints listen on loopback: only host networking lets the kubelet reach them.
    host, port = plugin_conf["http-addr"].rsplit(":", 1)
    assert host == "127.0.0.1" and spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [c] = spec["containers"]
    assert re.fullmatch(r"ghcr\.io/envelope-kms/envelope:[A-Za-z0-9_.-]+", c["image"]), c["image"]
    assert c.get("command") is None, "the image's ENTRYPOINT is the binary"
    assert c["args"] == ["plugin", "--config", "/etc/envelope/plugin.yaml"]
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert (get["host"], get["path"], str(get["port"])) == (host, path, port), probe
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}, kind
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    def host_path(mount_path):
        return volumes[mounts[mount_path]["name"]].get("hostPath")

    # The socket directory, shared with kube-apiserver, holds the socket plugin.yaml names.
    sock_dir = os.path.dirname(plugin_conf["socket"])
    assert sock_dir == "/run/envelope"
    assert host_path(sock_dir) == {"path": sock_dir, "type": "DirectoryOrCreate"}
    assert not mounts[sock_dir].get("readOnly")
    assert host_path(plugin_conf["data-dir"])["path"] == "/var/lib/envelope"
    assert not mounts[plugin_conf["data-dir"]].get("readOnly")
    assert host_path("/etc/envelope")["path"] == "/etc/envelope"
    assert mounts["/etc/envelope"]["readOnly"] is True
    # The header tells how to give the non-root plugin its host directories.
    text = POD.read_text()
    assert "-o 65532 -g 65532 /run/envelope" in text and "-o 65532 -g 65532 /var/lib/envelope" in text


KUBEADM_APISERVER = """\
apiVersion: v1
kind: Pod
metadata:
  labels:
    component: kube-apiserver
    tier: control-plane
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=10.0.0.10
    - --allow-privileged=true
    - --authorization-mode=Node,RBAC
    - --etcd-servers=https://127.0.0.1:2379
    - --secure-port=6443
    image: registry.k8s.io/kube-apiserver:v1.33.0
    name: kube-apiserver
    volumeMounts:
    - mountPath: /etc/ssl/certs
      name: ca-certs
      readOnly: true
    - mountPath: /etc/kubernetes/pki
      name: k8s-certs
      readOnly: true
  hostNetwork: true
  priority: 2000001000
  priorityClassName: system-node-critical
  securityContext:
    seccompProfile:
      type: RuntimeDefault
  volumes:
  - hostPath:
      path: /etc/ssl/certs
      type: DirectoryOrCreate
    name: ca-certs
  - hostPath:
      path: /etc/kubernetes/pki
      type: DirectoryOrCreate
    name: k8s-certs
"""


def test_kubeadm_patch_is_named_for_kube_apiserver():
    # kubeadm reads `target[suffix][+patchtype].extension` from the --patches directory.
    assert re.fullmatch(r"kube-apiserver[^+]*\+json\.ya?ml", KUBEADM_PATCH.name)
    ops = load(KUBEADM_PATCH)
    assert ops and all(op["op"] == "add" and op["path"].endswith("/-") for op in ops), "append-only"


def test_static_pod_and_patched_kube_apiserver_pass_a_server_dry_run(cluster, tmp_path):
    _, api, _ = cluster
    api.start()
    # The ServiceAccount admission looks the Pod's account up; no controller-manager runs here
    # to create kube-system's default account.
    api.kubectl("create", "serviceaccount", "default", "-n", "kube-system", check=False)
    r = api.kubectl("apply", "--dry-run=server", "-f", str(POD), "-o", "json")
    created = json.loads(r.stdout)
    assert created["metadata"]["namespace"] == "kube-system"
    assert created["spec"]["priority"] == 2000001000, "system-node-critical resolved by the server"

    base = tmp_path / "kube-apiserver.yaml"
    base.write_text(KUBEADM_APISERVER)
    r = api.kubectl("patch", "--local", "--type", "json", "--patch-file", str(KUBEADM_PATCH), "-f", str(base),
                    "-o", "yaml")
    patched = yaml.safe_load(r.stdout)
    c = patched["spec"]["containers"][0]
    assert c["command"][:6] == yaml.safe_load(KUBEADM_APISERVER)["spec"]["containers"][0]["command"], \
        "the existing flags are kept"
    assert "--encryption-provider-config=/etc/kubernetes/enc/encryption-config.yaml" in c["command"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"] for v in patched["spec"]["volumes"]}
    # The names and paths the user guide's manifest snippet uses (tests/python/test_docs.py).
    assert {n: mounts[n]["mountPath"] for n in ("enc", "kms-socket")} == \
        {n: volumes[n]["path"] for n in ("enc", "kms-socket")} == \
        {"enc": "/etc/kubernetes/enc", "kms-socket": "/run/envelope"}
    assert mounts["enc"]["readOnly"] is True
    assert not mounts["kms-socket"].get("readOnly"), "connecting to a socket needs write access"
    assert {"ca-certs", "k8s-certs"} <= set(volumes), "the existing volumes are kept"
    out = tmp_path / "patched.yaml"
    out.write_text(r.stdout.decode())
    api.kubectl("apply", "--dry-run=server", "-f", str(out))


# --- EncryptionConfiguration examples ------------------------------------------------------------

ENC_FILES = sorted(ENC.glob("*.yaml"))


def header_command(path):
    """The `envelope plugin …` command in a file's header comment, as argv."""
    lines, cmd = path.read_text().splitlines(), None
    for line in lines:
        if not line.startswith("#"):
            break
        body = line[1:].strip()
        if cmd is None and body.startswith("envelope plugin"):
            cmd = body
        elif cmd is not None and cmd.endswith("\\"):
            cmd = cmd[:-1] + " " + body
    assert cmd, f"{path.name}: no `envelope plugin` command in the header"
    return shlex.split(cmd)[2:]


def config_text(path):
    return "".join(line + "\n" for line in path.read_text().splitlines() if not line.startswith("#"))


def test_encryption_config_examples_are_all_there():
    names = {p.name for p in ENC_FILES}
    assert names == {"v2.yaml", "v1.yaml", "migration-1-add-new-key.yaml", "migration-2-new-key-first.yaml",
                     "migration-3-old-key-removed.yaml"}
    providers = {p.name: [e.get("kms", {}).get("name", "identity") for e in load(p)["resources"][0]["providers"]]
                 for p in ENC_FILES}
    assert providers["v2.yaml"] == ["envelope", "identity"]
    assert providers["v1.yaml"] == ["envelope", "identity"]
    assert load(ENC / "v1.yaml")["resources"][0]["providers"][0]["kms"]["apiVersion"] == "v1"
    assert providers["migration-1-add-new-key.yaml"] == ["envelope", "envelope-2026", "identity"]
    assert providers["migration-2-new-key-first.yaml"] == ["envelope-2026", "envelope", "identity"]
    assert providers["migration-3-old-key-removed.yaml"] == ["envelope-2026", "identity"]
    # deploy/encryption-config.yaml (named by the docs) stays the v2 example.
    assert load(DEPLOY / "encryption-config.yaml") == load(ENC / "v2.yaml")


@pytest.mark.parametrize("path", ENC_FILES, ids=lambda p: p.name)
def test_encryption_config_is_what_the_plugin_prints(path):
    """Runs the header's command (paths moved into a temporary directory) and compares the
    printed EncryptionConfiguration with the file, byte for byte."""
    d = short_tmp()
    try:
        args = header_command(path)
        run = os.path.join(d, "run")
        os.makedirs(run)
        if args[:1] == ["--config"]:
            assert args == ["--config", "/etc/envelope/plugin.yaml"]
            conf, _ = plugin_yaml_for(d, free_port())
            args = ["--config", conf]
        else:
            args = [a.replace("/run/envelope", run) for a in args]
            args += ["--data-dir", os.path.join(d, "data"), "--http-addr", f"127.0.0.1:{free_port()}"]
        p = Plugin(d, args)
        try:
            assert p.config() == config_text(path).replace("/run/envelope", run)
        finally:
            p.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_v2_example_and_migration_stages_load_into_kube_apiserver(cluster):
    """kube-apiserver loads each example (its sockets moved into a temporary directory) and, going
    through the migration stages in order, every Secret stays readable and new ones are written
    with the first provider."""
    etcd, api, plugins = cluster
    d = short_tmp()
    run = os.path.join(d, "run")
    os.makedirs(run)

    def enc(name):
        return config_text(ENC / name).replace("/run/envelope", run)

    def start_plugin(name):
        args = header_command(ENC / name)
        if args[:1] == ["--config"]:
            conf, _ = plugin_yaml_for(d, free_port())  # socket in run/, data in data/, as below
            args = ["--config", conf]
        else:
            args = [a.replace("/run/envelope", run) for a in args]
            args += ["--data-dir", os.path.join(d, "data"), "--http-addr", f"127.0.0.1:{free_port()}"]
        p = Plugin(d, args, name=name.removesuffix(".yaml"))
        plugins.append(p)
        return p

    def provider_of(name):
        return kms_v2(etcd.get(f"/registry/secrets/default/{name}"))[0]

    try:
        p = start_plugin("v2.yaml")
        api.start(enc("v2.yaml"))
        api.create_secret("default", "s-v2", b"written under v2.yaml")
        assert provider_of("s-v2") == "envelope"
        written = {"s-v2": b"written under v2.yaml"}
        for stage, provider in (("migration-1-add-new-key.yaml", "envelope"),
                                ("migration-2-new-key-first.yaml", "envelope-2026"),
                                ("migration-3-old-key-removed.yaml", "envelope-2026")):
            if stage.startswith("migration-3"):
                # What `envelope reencrypt` does before the old key goes: every Secret re-written
                # under the first provider (stage 2 still running).
                for name in written:
                    r = api.kubectl("get", "secret", name, "-n", "default", "-o", "json")
                    api.kubectl("replace", "-f", "-", input=r.stdout)
                    assert provider_of(name) == "envelope-2026", name
            p.stop()
            plugins.remove(p)
            p = start_plugin(stage)
            api.restart(enc(stage))
            name = "s-" + stage.split("-")[1]
            value = f"written under {stage}".encode()
            api.create_secret("default", name, value)
            written[name] = value
            assert provider_of(name) == provider, stage
            for n, v in written.items():
                assert api.read_secret("default", n) == v, f"{n} unreadable at {stage}"
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- systemd units -------------------------------------------------------------------------------

def unit_directives(path):
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_scores_ok_with_systemd_analyze_security(unit):
    r = subprocess.run([tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, f"{unit.name} scores {m.group(1)} {m.group(2)}:\n{r.stdout}"
    d = unit_directives(unit)
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
                       "CapabilityBoundingSet": "", "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes",
                       "RestrictNamespaces": "yes", "NoNewPrivileges": "yes", "UMask": "0077",
                       "LimitNOFILE": "65536", "SystemCallFilter": "@system-service", "DynamicUser": "yes",
                       "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6"}.items():
        assert value in d.get(key, []), f"{unit.name}: {key}={value}"
    for key in ("ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups"):
        assert d.get(key) == ["yes"], f"{unit.name}: {key}"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify(unit, tmp_path):
    # A copy whose ExecStart is the binary under test (verify checks that it is executable).
    copy = tmp_path / unit.name
    text = unit.read_text()
    assert "ExecStart=/usr/local/bin/envelope " in text
    copy.write_text(text.replace("/usr/local/bin/envelope", envelope_bin()))
    r = subprocess.run([tool("systemd-analyze"), "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # Messages about other units (e.g. the kubelet named in Before=) do not concern this file.
    ours = [line for line in (r.stdout + r.stderr).splitlines() if unit.name in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def exec_start(unit):
    [cmd] = unit_directives(unit)["ExecStart"]
    argv = shlex.split(cmd)
    assert argv[0] == "/usr/local/bin/envelope"
    return argv[1:]


def mdwe():
    """preexec_fn: the kernel's memory-deny-write-execute for the child (prctl PR_SET_MDWE,
    PR_MDWE_REFUSE_EXEC_GAIN; kept across execve), what MemoryDenyWriteExecute=yes enforces."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def test_mdwe_refuses_writable_executable_memory():
    """The check the two tests below rely on: under mdwe() a process cannot map W+X memory."""
    code = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    assert subprocess.run(["python3", "-c", code], capture_output=True).returncode == 0
    r = subprocess.run(["python3", "-c", code], capture_output=True, text=True, preexec_fn=mdwe)
    assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr


def test_plugin_unit_command_line_serves_under_mdwe(stubs):
    """The unit's ExecStart with deploy/plugin.yaml (socket, data directory and port moved into a
    temporary directory) serves Encrypt and Decrypt with writable-executable memory refused."""
    import grpc

    argv = exec_start(UNITS[0])
    assert argv == ["plugin", "--config", "/etc/envelope/plugin.yaml"]
    assert "/etc/envelope/plugin.yaml" in (DEPLOY / "kubernetes" / "envelope-plugin.static-pod.yaml").read_text()
    d = short_tmp()
    port = free_port()
    conf, settings = plugin_yaml_for(d, port)
    err = open(os.path.join(d, "stderr"), "w")
    p = subprocess.Popen([envelope_bin(), "plugin", "--config", conf], stdout=subprocess.DEVNULL, stderr=err,
                         preexec_fn=mdwe)
    try:
        wait_for(lambda: p.poll() is None and os.path.exists(settings["socket"]), 30, "the plugin's socket")
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 30, "/readyz")
        assert oct(os.stat(settings["socket"]).st_mode & 0o777) == "0o600"
        v2, v2_grpc = stubs["v2"], stubs["v2_grpc"]
        with grpc.insecure_channel(f"unix://{settings['socket']}") as ch:
            client = v2_grpc.KeyManagementServiceStub(ch)
            enc = client.Encrypt(v2.EncryptRequest(plaintext=b"k" * 32, uid="deploy-test"), timeout=10)
            dec = client.Decrypt(v2.DecryptRequest(ciphertext=enc.ciphertext, key_id=enc.key_id, uid="deploy-test",
                                                   annotations=dict(enc.annotations)), timeout=10)
        assert dec.plaintext == b"k" * 32
    finally:
        assert stop(p) == 0, open(os.path.join(d, "stderr")).read()
        err.close()
        shutil.rmtree(d, ignore_errors=True)


def kms_serve_help():
    r = subprocess.run([envelope_bin(), "kms", "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return re.sub(r"\s+", " ", r.stdout)  # clap wraps lines, `[env: NAME=]` included


def read_env_file(path):
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            env[k.strip()] = v.strip()
    return env


def self_signed(d):
    cert, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def test_kms_unit_command_line_serves_under_mdwe():
    """Every variable of deploy/envelope-kms.env is one `envelope kms serve` reads, and the unit's
    ExecStart with that environment (ports and directories moved, %d the credentials directory)
    serves HTTPS with writable-executable memory refused."""
    env = read_env_file(DEPLOY / "envelope-kms.env")
    help_text = kms_serve_help()
    for name in env:
        assert f"[env: {name}=" in help_text, f"{name} is not read by `envelope kms serve`"
    d = short_tmp()
    cert, key = self_signed(d)
    port, http = free_port(), free_port()
    env.update(ENVELOPE_KMS_LISTEN=f"127.0.0.1:{port}", ENVELOPE_KMS_HTTP_ADDR=f"127.0.0.1:{http}")
    unit = UNITS[1].read_text()
    for cred in ("tls.crt", "tls.key"):
        assert f"LoadCredential={cred}:" in unit and f"%d/{cred}" in unit
    argv = [a.replace("%d", d).replace("/var/lib/envelope-kms", os.path.join(d, "state"))
            for a in exec_start(UNITS[1])]
    assert "StateDirectory=envelope-kms" in unit and os.path.join(d, "state") in argv
    err = open(os.path.join(d, "stderr"), "w")
    p = subprocess.Popen([envelope_bin(), *argv], env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=err,
                         preexec_fn=mdwe)
    try:
        wait_for(lambda: p.poll() is None and http_get(http, "/readyz")[0] == 200, 30, "the key server's /readyz")
        import ssl

        ctx = ssl.create_default_context(cafile=cert)
        req = urllib.request.Request(f"https://127.0.0.1:{port}/", data=b"{}", method="POST",
                                     headers={"X-Amz-Target": "TrentService.ListKeys",
                                              "Content-Type": "application/x-amz-json-1.1"})
        try:
            urllib.request.urlopen(req, timeout=10, context=ctx)
            raise AssertionError("an unsigned request was accepted")
        except urllib.error.HTTPError as e:
            # TLS with the handed-over certificate works; the request is refused for want of a signature.
            assert e.code == 400 and "MissingAuthenticationToken" in e.read().decode()
        assert os.path.exists(os.path.join(d, "state", "audit.log"))
    finally:
        assert stop(p) == 0, open(os.path.join(d, "stderr")).read()
        err.close()
        shutil.rmtree(d, ignore_errors=True)


# --- Prometheus rules and the Grafana dashboard --------------------------------------------------

def series_names(metrics_text):
    """Every series name an OpenMetrics exposition can carry, from its # TYPE lines (families
    without samples yet, e.g. the aws backend's, included)."""
    names = set()
    for m in re.finditer(r"^# TYPE (\S+) (\w+)$", metrics_text, re.M):
        name, kind = m.groups()
        names |= {
            "counter": {f"{name}_total", f"{name}_created"},
            "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"},
            "info": {f"{name}_info"},
        }.get(kind, {name})
    return names


KMS_AKID = "AKIAENVELOPEDEPLOY01"
KMS_SECRET = "deploy-test-secret-0123456789abcdefghij"


def encrypt_decrypt(stubs, sock, authority=None):
    """One Encrypt and one Decrypt over a fresh connection (closed afterwards)."""
    import grpc

    v2, v2_grpc = stubs["v2"], stubs["v2_grpc"]
    opts = [("grpc.default_authority", authority)] if authority else []
    with grpc.insecure_channel(f"unix://{sock}", options=opts) as ch:
        c = v2_grpc.KeyManagementServiceStub(ch)
        e = c.Encrypt(v2.EncryptRequest(plaintext=b"d" * 32, uid="deploy-metrics"), timeout=10)
        d = c.Decrypt(v2.DecryptRequest(ciphertext=e.ciphertext, key_id=e.key_id, uid="deploy-metrics",
                                        annotations=dict(e.annotations)), timeout=10)
        assert d.plaintext == b"d" * 32


@pytest.fixture(scope="module")
def exposed_metrics(stubs):
    """Series names from the /metrics of a running key server, a plugin on deploy/plugin.yaml
    (embedded backend) and a plugin with the aws backend against that key server (remote calls,
    local KEK layer), each after Encrypt and Decrypt calls: families without samples are not
    exposed."""
    d = short_tmp()
    err = open(os.path.join(d, "stderr"), "w")
    procs = []
    try:
        kms_dir = os.path.join(d, "kms")
        os.makedirs(kms_dir, mode=0o700)
        creds = os.path.join(kms_dir, "credentials.yaml")
        with open(creds, "w") as f:
            f.write(f"- access_key_id: {KMS_AKID}\n  secret_access_key: '{KMS_SECRET}'\n"
                    f"  principal: arn:aws:iam::111122223333:user/deploy\n")
        os.chmod(creds, 0o600)
        seed = os.path.join(kms_dir, "seed.yaml")
        with open(seed, "w") as f:
            f.write("keys:\n  - alias: alias/k8s\n    description: deploy test\n")
        kport, khttp = free_port(), free_port()
        procs.append(subprocess.Popen(
            [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{kport}", "--http-addr", f"127.0.0.1:{khttp}",
             "--data-dir", os.path.join(kms_dir, "data"), "--credentials", creds, "--seed", seed],
            stdout=subprocess.DEVNULL, stderr=err))
        pport = free_port()
        conf, settings = plugin_yaml_for(d, pport)
        procs.append(subprocess.Popen([envelope_bin(), "plugin", "--config", conf], stdout=subprocess.DEVNULL,
                                      stderr=err))
        wait_for(lambda: all(p.poll() is None for p in procs) and http_get(khttp, "/readyz")[0] == 200, 30,
                 "the key server")
        aport, asock = free_port(), os.path.join(d, "aws.sock")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=KMS_AKID, AWS_SECRET_ACCESS_KEY=KMS_SECRET, AWS_EC2_METADATA_DISABLED="true",
                   AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
        procs.append(subprocess.Popen(
            [envelope_bin(), "plugin", "--backend", "aws", "--endpoint", f"http://127.0.0.1:{kport}", "--region",
             "us-east-1", "--key", "alias/k8s", "--socket", asock, "--data-dir", os.path.join(d, "aws-data"),
             "--http-addr", f"127.0.0.1:{aport}"], stdout=subprocess.DEVNULL, stderr=err, env=env))
        for port in (pport, aport):
            wait_for(lambda: all(p.poll() is None for p in procs) and http_get(port, "/readyz")[0] == 200, 30,
                     f"the plugin on port {port}")
        encrypt_decrypt(stubs, settings["socket"])
        # What grpc-go sends: the socket path as :authority (rewritten, counted at connection close).
        encrypt_decrypt(stubs, settings["socket"], authority=settings["socket"])
        encrypt_decrypt(stubs, asock)
        wait_for(lambda: "envelope_plugin_authority_rewrites_total" in http_get(pport, "/metrics")[1], 10,
                 "the :authority rewrite to be counted")
        texts = {"plugin": http_get(pport, "/metrics")[1], "plugin-aws": http_get(aport, "/metrics")[1],
                 "kms": http_get(khttp, "/metrics")[1]}
        yield set().union(*map(series_names, texts.values())), texts
    finally:
        for p in procs:
            stop(p)
        err.close()
        shutil.rmtree(d, ignore_errors=True)


METRIC = re.compile(r"\benvelope_[a-z0-9_]+\b")


def rule_exprs():
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in load(ALERTS)["groups"] for r in g["rules"]]


def test_alert_rules_pass_promtool_check_and_unit_tests():
    promtool = tool("promtool")
    r = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([promtool, "test", "rules", *map(str, ALERT_TESTS)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    # Every alert has a unit test that expects it to fire.
    tested = set(re.findall(r"alertname: (\w+)\s+exp_alerts:\n\s+- exp_labels", "".join(
        p.read_text() for p in ALERT_TESTS)))
    assert tested == {name for name, _ in rule_exprs()}, "alerts without a firing unit test"


def test_alert_rules_cover_health_rotation_remote_kms_and_audit():
    used = {m for _, e in rule_exprs() for m in METRIC.findall(e)}
    assert {"envelope_plugin_healthy", "envelope_plugin_key_id", "envelope_plugin_remote_calls_total",
            "envelope_plugin_remote_call_duration_seconds_bucket",
            "envelope_kms_audit_write_failures_total"} <= used, used


def test_alert_rules_use_only_exposed_metrics(exposed_metrics):
    names, texts = exposed_metrics
    for alert, expr in rule_exprs():
        for m in METRIC.findall(expr):
            assert m in names, f"{alert}: {m} is not exposed by the plugin or the key server"
    assert re.search(r'^envelope_plugin_key_id\{key_id_hash="[0-9a-f]+"\} 1$', texts["plugin"], re.M)


def dashboard_exprs():
    d = json.loads(DASHBOARD.read_text())
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            out.append((f"variable {v['name']}", v["query"]["query"]))
    return out


def grafana_to_promql(expr):
    """A dashboard expression with Grafana's variables filled in, as Prometheus would get it."""
    m = re.fullmatch(r"label_values\((.*), (\w+)\)", expr)
    if m:
        expr = f"count by ({m.group(2)}) ({m.group(1)})"
    expr = expr.replace("$__rate_interval", "5m")
    return re.sub(r"\$\w+", ".*", expr)


def test_dashboard_is_well_formed():
    d = json.loads(DASHBOARD.read_text())
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    panels = d["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
    # Both components, and what the issue asks for.
    used = {m for _, e in dashboard_exprs() for m in METRIC.findall(e)}
    for m in ("envelope_plugin_rpc_requests_total", "envelope_plugin_rpc_duration_seconds_bucket",
              "envelope_plugin_healthy", "envelope_plugin_remote_calls_total",
              "envelope_plugin_remote_call_duration_seconds_bucket", "envelope_plugin_local_kek_events_total",
              "envelope_plugin_local_kek_cached", "envelope_kms_requests_total",
              "envelope_kms_request_duration_seconds_bucket", "envelope_kms_audit_write_failures_total"):
        assert m in used, m
    variables = {v["name"] for v in d["templating"]["list"]}
    for _, e in dashboard_exprs():
        for v in re.findall(r"\$\{?(\w+)", e):
            assert v.startswith("__") or v in variables, f"undefined variable ${v}"


def test_dashboard_expressions_parse_and_use_exposed_metrics(exposed_metrics, tmp_path):
    names, _ = exposed_metrics
    rules = []
    for i, (title, expr) in enumerate(dashboard_exprs()):
        for m in METRIC.findall(expr):
            assert m in names, f"{title}: {m} is not exposed by the plugin or the key server"
        rules.append({"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(expr)})
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in r.stdout, r.stdout + r.stderr


# --- Dockerfile: the static binary and the image -------------------------------------------------

def dockerfile_stages():
    stages = []
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", line, re.I)
        if m:
            stages.append({"from": m.group(1), "name": m.group(2), "lines": []})
        elif stages:
            stages[-1]["lines"].append(line)
    return stages


def test_dockerfile_builds_a_static_binary_into_an_empty_non_root_image():
    stages = {s["name"]: s for s in dockerfile_stages()}
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG RUST_VERSION=1\.\d+$", text, re.M)
    assert stages["build"]["from"] == "docker.io/library/rust:${RUST_VERSION}-bookworm"
    build = "\n".join(stages["build"]["lines"])
    assert 'ENV RUSTFLAGS="-C target-feature=+crt-static"' in build
    assert "cargo build --release --locked -p envelope --target" in build
    assert stages["runtime"]["from"] == "scratch"
    runtime = stages["runtime"]["lines"]
    assert "USER 65532:65532" in runtime and 'ENTRYPOINT ["/envelope"]' in runtime
    final = dockerfile_stages()[-1]
    assert final["from"] == "runtime" and final["name"] is None, "the default target is the image"
    assert "COPY --from=build /out/envelope /envelope" in final["lines"]
    assert stages["prebuilt"]["from"] == "runtime" and "COPY envelope /envelope" in stages["prebuilt"]["lines"]
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "target" in ignore and ".git" in ignore


def cargo_failure(stderr):
    """What a failed cargo build said, without its `Compiling` lines: the errors and the end."""
    lines = [l for l in stderr.splitlines() if not l.lstrip().startswith(("Compiling ", "Downloaded ", "Downloading "))]
    return "cargo build failed:\n" + "\n".join(lines[-60:])[-4000:]


@pytest.fixture(scope="module")
def static_binary():
    """`envelope` built as the Dockerfile's build stage builds it (RUSTFLAGS +crt-static, an
    explicit --target), in the debug profile and its own target directory (target/static): a
    second full build of the workspace's binary, niced. Incremental after the first run."""
    cargo = shutil.which("cargo")
    assert cargo, "cargo is needed to build the static binary"
    # No debug information and no incremental cache: only the binary's linkage and behaviour are
    # looked at, and this second build is the largest thing a clean run writes to disk.
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target" / "static"),
               RUSTFLAGS="-C target-feature=+crt-static", CARGO_INCREMENTAL="0",
               CARGO_PROFILE_DEV_DEBUG="0")
    started = time.time()
    r = subprocess.run(["nice", "-n", "19", cargo, "build", "--locked", "-p", "envelope", "--target", STATIC_TARGET],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=3 * 3600)
    assert r.returncode == 0, cargo_failure(r.stderr)
    print(f"static build: {time.time() - started:.0f}s")
    return ROOT / "target" / "static" / STATIC_TARGET / "debug" / "envelope"


def test_static_binary_is_static_and_serves(static_binary):
    r = subprocess.run([tool("file"), "-b", str(static_binary)], capture_output=True, text=True, check=True)
    assert re.search(r"statically linked|static-pie linked", r.stdout), r.stdout
    r = subprocess.run(["ldd", str(static_binary)], capture_output=True, text=True)
    assert r.returncode != 0 or "statically linked" in r.stdout + r.stderr, r.stdout
    r = subprocess.run([str(static_binary), "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("envelope "), r.stdout + r.stderr
    d = short_tmp()
    port = free_port()
    sock = os.path.join(d, "kms.sock")
    p = subprocess.Popen([str(static_binary), "plugin", "--socket", sock, "--data-dir", os.path.join(d, "data"),
                          "--http-addr", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: p.poll() is None and os.path.exists(sock), 30, "the static plugin's socket")
        wait_for(lambda: http_get(port, "/livez")[0] == 200, 30, "/livez")
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)
    finally:
        assert stop(p) == 0, p.stderr.read().decode(errors="replace")
        shutil.rmtree(d, ignore_errors=True)


def test_image_builds_with_buildah_and_runs(static_binary, tmp_path):
    """The `prebuilt` stage (the image's settings, the binary from the context) built offline with
    buildah on vfs storage of its own (the `build` stage needs the rust image from a registry):
    its configuration (UID/GID 65532, the binary as entrypoint), its contents, and the binary
    running inside it."""
    buildah = tool("buildah")
    ctx = tmp_path / "context"
    ctx.mkdir()
    shutil.copy2(static_binary, ctx / "envelope")
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", ctx / "ca-certificates.crt")
    store = tmp_path / "storage"
    base = [buildah, "--root", str(store / "root"), "--runroot", str(store / "run"), "--storage-driver", "vfs"]
    image = "localhost/envelope:deploy-test"

    def b(*args, timeout=600):
        r = subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"buildah {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    try:
        b("bud", "--isolation", "chroot", "--target", "prebuilt", "-f", str(DOCKERFILE), "-t", image, str(ctx))
        config = json.loads(b("inspect", "--type", "image", image))["OCIv1"]["config"]
        assert config["User"] == "65532:65532"
        assert config["Entrypoint"] == ["/envelope"]
        assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in config["Env"]
        container = b("from", image).strip()
        # The image holds the binary and the CA bundle, nothing else (before `run` adds mount points).
        mount = b("mount", container).strip()
        assert sorted(os.listdir(mount)) == ["envelope", "etc"], os.listdir(mount)
        assert os.listdir(os.path.join(mount, "etc", "ssl", "certs")) == ["ca-certificates.crt"]
        b("umount", container)
        out = b("run", "--isolation", "chroot", container, "--", "/envelope", "--version")
        assert out.startswith("envelope "), out
        b("rm", container)
    finally:
        subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(store, ignore_errors=True)
