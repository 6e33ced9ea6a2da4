"""The socket's group really lets its members in: checked as a non-root member of that group.

A first run as root creates the socket directory 0750 root:root; a later run with
--socket-group G --socket-mode 0660 must open that directory to G (it is the plugin's own
socket directory), or members of G get EACCES on connect.
"""

import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from harness import envelope_bin, wait_for

GROUP, USER = "envelope-sock-test", "envelope-sock-user"


@pytest.fixture
def member():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a group and a user that belongs to it")
    subprocess.run(["groupadd", "-f", GROUP], check=True)
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", GROUP, USER], check=True)
    yield USER


def _run_plugin(base, *extra):
    log = open(os.path.join(base, "plugin.err"), "a")
    sock = os.path.join(base, "run", "envelope", "kms.sock")
    p = subprocess.Popen([envelope_bin(), "plugin", "--socket", sock, "--data-dir", os.path.join(base, "data"),
                          "--http-addr", "off", *extra], stdout=subprocess.DEVNULL, stderr=log)
    wait_for(lambda: os.path.exists(sock) or p.poll() is not None, 30, "the plugin's socket")
    assert p.poll() is None, open(os.path.join(base, "plugin.err")).read()
    return p, sock


def _connect_as(user, sock):
    """A plain AF_UNIX connect as `user` (a separate process, so the kernel checks that user's
    groups). Debian's /usr/bin/python3, since the test venv may sit where `user` cannot read."""
    code = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({sock!r})"
    return subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", "-c", code],
                          capture_output=True, text=True, timeout=60)


def test_socket_group_members_can_connect_after_a_first_run_as_root(member):
    base = tempfile.mkdtemp(prefix="envelope-sock-")
    os.chmod(base, 0o755)  # the test user must reach the run directory inside
    try:
        # First run as root, no group: the socket directory is created 0750 root:root.
        p, sock = _run_plugin(base)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
        os.chmod(os.path.join(base, "run"), 0o755)
        st = os.stat(os.path.dirname(sock))
        assert (st.st_mode & 0o777, st.st_gid) == (0o750, 0)
        # Second run: the group is given; its members can connect.
        p, sock = _run_plugin(base, "--socket-group", GROUP, "--socket-mode", "0660")
        try:
            r = _connect_as(member, sock)
            assert r.returncode == 0, r.stdout + r.stderr
            # Someone outside the group still cannot.
            r = _connect_as("nobody", sock)
            assert r.returncode != 0, "a user outside the socket group connected"
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=30) == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_directory_that_is_not_the_plugins_own_is_refused_with_the_fix(member):
    base = tempfile.mkdtemp(prefix="envelope-sock-")
    try:
        shared = os.path.join(base, "run", "envelope")
        os.makedirs(shared, mode=0o700)
        with open(os.path.join(shared, "other-file"), "w") as f:
            f.write("not a socket")
        r = subprocess.run([envelope_bin(), "plugin", "--socket", os.path.join(shared, "kms.sock"), "--data-dir",
                            os.path.join(base, "data"), "--http-addr", "off", "--socket-group", GROUP,
                            "--socket-mode", "0660"], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert f"chgrp {GROUP}" in r.stderr and "chmod g+x" in r.stderr, r.stderr
        assert os.stat(shared).st_mode & 0o777 == 0o700, "left as it was"
    finally:
        shutil.rmtree(base, ignore_errors=True)
