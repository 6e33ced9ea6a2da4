"""Searching the key server's audit history: CloudTrail's LookupEvents on the key server's own
endpoint (the real aws CLI and boto3's cloudtrail client), and `envelope kms audit` on the host,
including `--follow` across a log rotation.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from botocore.exceptions import ClientError

from harness import ROOT, envelope_bin, free_port, wait_listening

ADMIN = ("AKIAENVELOPELOOKUP01", "lookup-test-admin-secret-0123456789abcdef", "arn:aws:iam::111122223333:user/ops")
# Allowed every KMS action but not the CloudTrail one: the history is not a KMS permission.
KMS_ONLY = ("AKIAENVELOPELOOKUP02", "lookup-test-kmsonly-secret-0123456789abcd", "arn:aws:iam::111122223333:user/app")
# Allowed only to search the history.
AUDITOR = ("AKIAENVELOPELOOKUP03", "lookup-test-auditor-secret-0123456789abc", "arn:aws:iam::111122223333:user/auditor")
KMS_ONLY_POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}'
AUDITOR_POLICY = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"cloudtrail:LookupEvents",'
                  '"Resource":"*"}]}')


@pytest.fixture(scope="module")
def server():
    tmp = tempfile.mkdtemp(prefix="envelope-lookup-")
    creds = os.path.join(tmp, "credentials.yaml")
    with open(creds, "w") as f:
        f.write(f"- access_key_id: {ADMIN[0]}\n  secret_access_key: '{ADMIN[1]}'\n  principal: {ADMIN[2]}\n")
        f.write(f"- access_key_id: {KMS_ONLY[0]}\n  secret_access_key: '{KMS_ONLY[1]}'\n  principal: {KMS_ONLY[2]}\n"
                f"  policy: '{KMS_ONLY_POLICY}'\n")
        f.write(f"- access_key_id: {AUDITOR[0]}\n  secret_access_key: '{AUDITOR[1]}'\n  principal: {AUDITOR[2]}\n"
                f"  policy: '{AUDITOR_POLICY}'\n")
    os.chmod(creds, 0o600)
    port = free_port()
    data = os.path.join(tmp, "data")
    log = open(os.path.join(tmp, "stderr.log"), "w")
    p = subprocess.Popen(
        [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off",
         "--data-dir", data, "--credentials", creds],
        stdout=subprocess.DEVNULL, stderr=log)
    wait_listening(p, port, log=os.path.join(tmp, "stderr.log"))
    yield {"port": port, "data": data, "proc": p, "tmp": tmp}
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0
    log.close()
    shutil.rmtree(tmp, ignore_errors=True)


def _client(server, service, who=ADMIN):
    return boto3.client(service, endpoint_url=f"http://127.0.0.1:{server['port']}", region_name="us-east-1",
                        aws_access_key_id=who[0], aws_secret_access_key=who[1])


@pytest.fixture(scope="module")
def history(server):
    """A key, an alias, two Decrypts, one failed DescribeKey — and the key's ARN."""
    kms = _client(server, "kms")
    meta = kms.create_key(Description="lookup")["KeyMetadata"]
    kms.create_alias(AliasName="alias/lookup", TargetKeyId=meta["KeyId"])
    blob = kms.encrypt(KeyId="alias/lookup", Plaintext=b"secret", EncryptionContext={"app": "lookup"})["CiphertextBlob"]
    for _ in range(2):
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "lookup"})
    with pytest.raises(ClientError):
        kms.describe_key(KeyId="alias/does-not-exist")
    return meta


def _aws(server, *args, who=ADMIN):
    env = dict(os.environ, AWS_ACCESS_KEY_ID=who[0], AWS_SECRET_ACCESS_KEY=who[1], AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    aws = str(ROOT / ".venv" / "bin" / "aws")
    return subprocess.run([aws, "--endpoint-url", f"http://127.0.0.1:{server['port']}", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_aws_cli_finds_the_decrypt_events(server, history):
    r = _aws(server, "cloudtrail", "lookup-events", "--lookup-attributes",
             "AttributeKey=EventName,AttributeValue=Decrypt")
    assert r.returncode == 0, r.stderr
    events = json.loads(r.stdout)["Events"]
    assert len(events) == 2
    for e in events:
        assert e["EventName"] == "Decrypt" and e["EventSource"] == "kms.amazonaws.com"
        assert e["ReadOnly"] == "true" and e["Username"] == "ops" and e["AccessKeyId"] == ADMIN[0]
        assert e["Resources"] == [{"ResourceType": "AWS::KMS::Key", "ResourceName": history["Arn"]}]
        record = json.loads(e["CloudTrailEvent"])
        assert record["eventID"] == e["EventId"]
        assert record["requestParameters"]["encryptionContext"] == {"app": "lookup"}
        assert "plaintext" not in e["CloudTrailEvent"].lower()


def test_boto3_pages_newest_first_and_filters(server, history):
    ct = _client(server, "cloudtrail")
    pages = ct.get_paginator("lookup_events").paginate(PaginationConfig={"PageSize": 2})
    events = [e for page in pages for e in page["Events"]]
    times = [e["EventTime"] for e in events]
    assert times == sorted(times, reverse=True)
    names = [e["EventName"] for e in events]
    for name in ("CreateKey", "CreateAlias", "Encrypt", "Decrypt", "DescribeKey"):
        assert name in names
    assert len({e["EventId"] for e in events}) == len(events), "no event twice across pages"
    # A state change is one event (its outcome), not two.
    assert names.count("CreateKey") == 1
    by_key = ct.lookup_events(LookupAttributes=[{"AttributeKey": "ResourceName", "AttributeValue": history["KeyId"]}])
    assert {e["EventName"] for e in by_key["Events"]} >= {"CreateKey", "CreateAlias", "Encrypt", "Decrypt"}
    writes = ct.lookup_events(LookupAttributes=[{"AttributeKey": "ReadOnly", "AttributeValue": "false"}])["Events"]
    assert {e["EventName"] for e in writes} >= {"CreateKey", "CreateAlias"} and "Decrypt" not in {
        e["EventName"] for e in writes}
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert ct.lookup_events(StartTime=future)["Events"] == []
    assert len(ct.lookup_events(EndTime=future, MaxResults=1)["Events"]) == 1


@pytest.mark.parametrize("kwargs,code", [
    ({"MaxResults": 51}, "InvalidMaxResultsException"),
    ({"StartTime": datetime(2026, 2, 1, tzinfo=timezone.utc), "EndTime": datetime(2026, 1, 1, tzinfo=timezone.utc)},
     "InvalidTimeRangeException"),
    ({"LookupAttributes": [{"AttributeKey": "EventName", "AttributeValue": "a"},
                           {"AttributeKey": "EventName", "AttributeValue": "b"}]}, "InvalidLookupAttributesException"),
    ({"NextToken": "not-a-token"}, "InvalidNextTokenException"),
    ({"EventCategory": "insight", "NextToken": "x"}, "InvalidNextTokenException"),
])
def test_invalid_requests_get_cloudtrail_errors(server, kwargs, code):
    with pytest.raises(ClientError) as e:
        _client(server, "cloudtrail").lookup_events(**kwargs)
    assert e.value.response["Error"]["Code"] == code


def test_lookup_is_its_own_permission(server, history):
    with pytest.raises(ClientError) as e:
        _client(server, "cloudtrail", KMS_ONLY).lookup_events(MaxResults=1)
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    events = _client(server, "cloudtrail", AUDITOR).lookup_events(MaxResults=50)["Events"]
    assert events, "the auditor sees the history"
    # ... and nothing else.
    with pytest.raises(ClientError) as e:
        _client(server, "kms", AUDITOR).list_keys()
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    # The refused lookup is itself in the history.
    refused = _client(server, "cloudtrail", AUDITOR).lookup_events(
        LookupAttributes=[{"AttributeKey": "AccessKeyId", "AttributeValue": KMS_ONLY[0]}])["Events"]
    assert any(e["EventName"] == "LookupEvents" and json.loads(e["CloudTrailEvent"]).get("errorCode")
               == "AccessDeniedException" for e in refused)


def test_a_request_signed_for_kms_is_refused_on_the_cloudtrail_target(server):
    import urllib.request
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    url = f"http://127.0.0.1:{server['port']}/"
    req = AWSRequest(method="POST", url=url, data=b"{}", headers={
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents"})
    SigV4Auth(Credentials(ADMIN[0], ADMIN[1]), "kms", "us-east-1").add_auth(req)
    r = urllib.request.Request(url, data=b"{}", headers=dict(req.headers.items()), method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(r, timeout=10)
    assert e.value.code == 400
    assert json.loads(e.value.read())["__type"] == "InvalidSignatureException"


def _audit(server, *args):
    return subprocess.run([envelope_bin(), "kms", "audit", "--data-dir", server["data"], *args],
                          capture_output=True, text=True, timeout=60)


def test_kms_audit_filters_and_formats(server, history):
    r = _audit(server, "--event-name", "Decrypt", "--output", "json")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(records) == 2 and all(x["eventName"] == "Decrypt" for x in records)
    assert records[0]["eventTime"] <= records[1]["eventTime"], "oldest first"
    r = _audit(server, "--errors")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("TIME (UTC)")
    assert any("DescribeKey" in x and "NotFoundException" in x for x in lines[1:])
    assert not any("CreateKey" in x for x in lines[1:])
    r = _audit(server, "--resource", history["KeyId"], "--user", "ops", "--since", "1h", "--limit", "1",
               "--output", "json")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1
    r = _audit(server, "--since", "tomorrow")
    assert r.returncode != 0 and "--since" in r.stderr


def test_kms_audit_follow_sees_new_records_across_a_rotation(server, history):
    kms = _client(server, "kms")
    f = subprocess.Popen([envelope_bin(), "kms", "audit", "--data-dir", server["data"], "--follow", "--limit", "0",
                          "--event-name", "GenerateRandom", "--output", "json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        kms.generate_random(NumberOfBytes=16)
        first = json.loads(f.stdout.readline())
        assert first["eventName"] == "GenerateRandom"
        # logrotate's way: move the file away, then SIGHUP so the server reopens its path.
        log = os.path.join(server["data"], "audit.log")
        os.rename(log, log + ".1")
        server["proc"].send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while not os.path.exists(log):
            assert time.time() < deadline, "the server did not reopen the audit log"
            time.sleep(0.05)
        kms.generate_random(NumberOfBytes=16)
        second = json.loads(f.stdout.readline())
        assert second["eventName"] == "GenerateRandom" and second["eventID"] != first["eventID"]
    finally:
        f.terminate()
        f.wait(timeout=10)
    # Both are still found: the rotated copy is read too.
    r = _audit(server, "--event-name", "GenerateRandom", "--output", "json")
    assert len(r.stdout.splitlines()) == 2
    events = _client(server, "cloudtrail").lookup_events(
        LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "GenerateRandom"}])["Events"]
    assert len(events) == 2


def test_server_side_rotation_compresses_keeps_n_copies_and_stays_searchable(tmp_path):
    creds = tmp_path / "credentials.yaml"
    creds.write_text(f"- access_key_id: {ADMIN[0]}\n  secret_access_key: '{ADMIN[1]}'\n  principal: {ADMIN[2]}\n")
    creds.chmod(0o600)
    port = free_port()
    data = tmp_path / "data"
    p = subprocess.Popen(
        [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off", "--data-dir", str(data),
         "--credentials", str(creds), "--audit-rotate-size", "4KiB", "--audit-retain", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_listening(p, port)
        srv = {"port": port}
        kms = _client(srv, "kms")
        for _ in range(40):
            kms.generate_random(NumberOfBytes=8)
        deadline = time.time() + 20
        while True:
            copies = sorted(x.name for x in data.iterdir() if x.name.startswith("audit.log."))
            if copies and all(c.endswith(".gz") for c in copies) and len(copies) <= 2:
                break
            assert time.time() < deadline, copies
            time.sleep(0.1)
        assert len(copies) == 2, copies
        assert (data / "audit.log").stat().st_size < 8192
        # The newest events come back newest first, across the live file and the copies.
        events = _client(srv, "cloudtrail").lookup_events(
            LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "GenerateRandom"}])["Events"]
        live = len((data / "audit.log").read_text().splitlines())
        assert len(events) > live, "the rotated copies are searched too"
        assert len(events) < 40, "the copies beyond --audit-retain are gone"
        times = [e["EventTime"] for e in events]
        assert times == sorted(times, reverse=True)
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=20)
    assert "rotated at 4096 bytes, keeping 2 copies" in out
