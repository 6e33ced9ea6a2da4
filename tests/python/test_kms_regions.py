"""One `envelope kms serve` answering for several regions (`--region` repeated), with boto3 and
the aws CLI: each region has its own keys, aliases, ARNs and audit history, picked by the
request's SigV4 credential scope, as in AWS. The attacks first: a key id, key ARN, alias or
ciphertext of one region used in another, and an identity policy scoped to one region used in
another; then what survives a restart, the seed file's `region`, and a region not served.
"""

import json
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
from test_kms_server import ACCOUNT, _aws_cli, _env

HOME, WEST, EU = "us-east-1", "us-west-2", "eu-west-1"
ADMIN = ("AKIAENVELOPEREGION01", "region-admin-secret-0123456789abcdefghijk")
EAST_ONLY = ("AKIAENVELOPEREGION02", "region-east-only-secret-0123456789abcdefg")
EAST_ONLY_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "kms:*", "Resource": f"arn:aws:kms:{HOME}:{ACCOUNT}:key/*"},
    {"Effect": "Allow", "Action": ["kms:CreateKey", "kms:ListKeys", "kms:ListAliases"], "Resource": "*"},
]})
SEED = """keys:
  - alias: alias/seeded
    description: home
  - alias: alias/seeded
    description: in the west
    region: us-west-2
"""


class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="envelope-regions-")
        self.creds = os.path.join(self.dir, "credentials.yaml")
        with open(self.creds, "w") as f:
            f.write(f"- access_key_id: {ADMIN[0]}\n  secret_access_key: '{ADMIN[1]}'\n"
                    f"  principal: arn:aws:iam::{ACCOUNT}:user/admin\n"
                    f"- access_key_id: {EAST_ONLY[0]}\n  secret_access_key: '{EAST_ONLY[1]}'\n"
                    f"  principal: arn:aws:iam::{ACCOUNT}:user/east\n  policy: '{EAST_ONLY_POLICY}'\n")
        os.chmod(self.creds, 0o600)
        self.seed = os.path.join(self.dir, "seed.yaml")
        with open(self.seed, "w") as f:
            f.write(SEED)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.p = None
        self.out = None

    def start(self, *extra):
        self.out = os.path.join(self.dir, "stdout.log")
        with open(self.out, "w") as out, open(os.path.join(self.dir, "stderr.log"), "a") as err:
            self.p = subprocess.Popen(
                [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{self.port}", "--http-addr", "off",
                 "--data-dir", os.path.join(self.dir, "data"), "--credentials", self.creds,
                 "--account-id", ACCOUNT, "--seed", self.seed, *extra],
                stdout=out, stderr=err,
            )
        wait_listening(self.p, self.port)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        assert self.p.wait(timeout=20) == 0

    def client(self, region, who=ADMIN):
        return boto3.client("kms", region_name=region, endpoint_url=self.url, aws_access_key_id=who[0],
                            aws_secret_access_key=who[1], config=Config(retries={"max_attempts": 1}))


@pytest.fixture(scope="module")
def kms():
    s = Server()
    s.start("--region", HOME, "--region", f"{WEST},{EU}")
    yield s
    s.stop()
    shutil.rmtree(s.dir, ignore_errors=True)


def _code(e):
    return e.value.response["Error"]["Code"], e.value.response["Error"].get("Message", "")


def test_each_region_has_its_own_keys_aliases_and_arns(kms):
    east, west = kms.client(HOME), kms.client(WEST)
    e = east.create_key(Description="east")["KeyMetadata"]
    w = west.create_key(Description="west")["KeyMetadata"]
    assert e["Arn"] == f"arn:aws:kms:{HOME}:{ACCOUNT}:key/{e['KeyId']}"
    assert w["Arn"] == f"arn:aws:kms:{WEST}:{ACCOUNT}:key/{w['KeyId']}"
    # The same alias name in both regions names each region's own key.
    east.create_alias(AliasName="alias/app", TargetKeyId=e["KeyId"])
    west.create_alias(AliasName="alias/app", TargetKeyId=w["KeyId"])
    assert east.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == e["KeyId"]
    assert west.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == w["KeyId"]
    aliases = {a["AliasName"]: a for a in west.list_aliases()["Aliases"]}
    assert aliases["alias/app"]["AliasArn"] == f"arn:aws:kms:{WEST}:{ACCOUNT}:alias/app"
    east_ids = {k["KeyId"] for k in east.list_keys()["Keys"]}
    west_ids = {k["KeyId"] for k in west.list_keys()["Keys"]}
    assert e["KeyId"] in east_ids and w["KeyId"] in west_ids
    assert not east_ids & west_ids
    # A third region starts empty but for nothing: no key of the others shows there.
    eu_ids = {k["KeyId"] for k in kms.client(EU).list_keys()["Keys"]}
    assert not eu_ids & (east_ids | west_ids)


def test_a_key_of_one_region_is_not_found_in_another(kms):
    east, west = kms.client(HOME), kms.client(WEST)
    e = east.create_key()["KeyMetadata"]
    # By key id, by key ARN and by alias: NotFound, as AWS answers across regions.
    with pytest.raises(ClientError) as x:
        west.describe_key(KeyId=e["KeyId"])
    assert _code(x)[0] == "NotFoundException"
    with pytest.raises(ClientError) as x:
        west.describe_key(KeyId=e["Arn"])
    assert _code(x) == ("NotFoundException", f"Invalid arn {HOME}")
    with pytest.raises(ClientError) as x:
        west.encrypt(KeyId=e["KeyId"], Plaintext=b"x")
    assert _code(x)[0] == "NotFoundException"
    # Nor can a change in one region reach another's key.
    with pytest.raises(ClientError) as x:
        west.disable_key(KeyId=e["KeyId"])
    assert _code(x)[0] == "NotFoundException"
    with pytest.raises(ClientError) as x:
        west.create_alias(AliasName="alias/hijack", TargetKeyId=e["KeyId"])
    assert _code(x)[0] == "NotFoundException"
    assert east.describe_key(KeyId=e["KeyId"])["KeyMetadata"]["Enabled"] is True


def test_a_ciphertext_decrypts_only_in_its_own_region(kms):
    east, west = kms.client(HOME), kms.client(WEST)
    e = east.create_key()["KeyMetadata"]
    blob = east.encrypt(KeyId=e["KeyId"], Plaintext=b"regional secret")["CiphertextBlob"]
    with pytest.raises(ClientError) as x:
        west.decrypt(CiphertextBlob=blob)
    # As for any ciphertext whose key the region does not hold: no message, as AWS sends none.
    assert _code(x) == ("InvalidCiphertextException", "")
    with pytest.raises(ClientError):
        west.re_encrypt(CiphertextBlob=blob, DestinationKeyId="alias/seeded")
    assert east.decrypt(CiphertextBlob=blob)["Plaintext"] == b"regional secret"


def test_an_identity_policy_for_one_region_allows_nothing_in_another(kms):
    east, west = kms.client(HOME, EAST_ONLY), kms.client(WEST, EAST_ONLY)
    mine = east.create_key()["KeyMetadata"]["KeyId"]
    assert east.encrypt(KeyId=mine, Plaintext=b"ok")["KeyId"].startswith(f"arn:aws:kms:{HOME}:")
    # CreateKey is allowed anywhere; using the key is not outside us-east-1.
    theirs = west.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as x:
        west.encrypt(KeyId=theirs, Plaintext=b"no")
    assert _code(x)[0] == "AccessDeniedException"
    assert f"arn:aws:kms:{WEST}:{ACCOUNT}:key/{theirs}" in _code(x)[1]


def test_the_seed_file_creates_each_key_in_its_region(kms):
    east, west = kms.client(HOME), kms.client(WEST)
    he = east.describe_key(KeyId="alias/seeded")["KeyMetadata"]
    hw = west.describe_key(KeyId="alias/seeded")["KeyMetadata"]
    assert (he["Description"], hw["Description"]) == ("home", "in the west")
    assert hw["Arn"].startswith(f"arn:aws:kms:{WEST}:")
    with open(kms.out) as f:
        out = f.read()
    assert "seed: created alias/seeded\n" in out and f"seed: created alias/seeded ({WEST})" in out
    with pytest.raises(ClientError) as x:
        kms.client(EU).describe_key(KeyId="alias/seeded")
    assert _code(x)[0] == "NotFoundException"


def test_a_region_not_served_is_refused(kms):
    with pytest.raises(ClientError) as x:
        kms.client("ap-south-1").list_keys()
    code, message = _code(x)
    assert code == "InvalidSignatureException", (code, message)
    assert "Credential should be scoped to a valid region, not 'ap-south-1'." in message


def test_the_aws_cli_picks_the_region(kms):
    env = _env(*ADMIN)  # the command line's --region wins over its AWS_DEFAULT_REGION

    def cli(region, *args):
        r = subprocess.run([_aws_cli(), "--endpoint-url", kms.url, "--region", region, "--output", "json", "kms",
                            *args], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout) if r.stdout.strip() else None

    made = cli(EU, "create-key", "--description", "from the cli")["KeyMetadata"]
    assert made["Arn"].startswith(f"arn:aws:kms:{EU}:{ACCOUNT}:key/")
    assert made["KeyId"] in {k["KeyId"] for k in cli(EU, "list-keys")["Keys"]}
    assert made["KeyId"] not in {k["KeyId"] for k in cli(HOME, "list-keys")["Keys"]}


def test_regions_survive_a_restart_and_each_has_its_own_history(kms):
    east, west = kms.client(HOME), kms.client(WEST)
    e = east.create_key(Description="before restart, east")["KeyMetadata"]["KeyId"]
    w = west.create_key(Description="before restart, west")["KeyMetadata"]["KeyId"]
    kms.stop()
    kms.start("--region", HOME, "--region", f"{WEST},{EU}")
    east, west = kms.client(HOME), kms.client(WEST)
    assert east.describe_key(KeyId=e)["KeyMetadata"]["Description"] == "before restart, east"
    assert west.describe_key(KeyId=w)["KeyMetadata"]["Description"] == "before restart, west"
    with pytest.raises(ClientError):
        east.describe_key(KeyId=w)
    # The west region's keys are in their own store under the data directory.
    assert os.path.isfile(os.path.join(kms.dir, "data", "regions", WEST, "keystore.db"))

    def events(region):
        trail = boto3.client("cloudtrail", region_name=region, endpoint_url=kms.url, aws_access_key_id=ADMIN[0],
                             aws_secret_access_key=ADMIN[1])
        found = trail.lookup_events(LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "CreateKey"}],
                                    MaxResults=50)["Events"]
        return [json.loads(ev["CloudTrailEvent"]) for ev in found]

    west_events = events(WEST)
    assert west_events and all(ev["awsRegion"] == WEST for ev in west_events)
    assert any(w in json.dumps(ev) for ev in west_events)
    assert not any(w in json.dumps(ev) for ev in events(HOME))


def test_a_region_given_twice_or_malformed_stops_the_start():
    for regions in (["--region", HOME, "--region", HOME], ["--region", f"{HOME},Not A Region"]):
        d = tempfile.mkdtemp(prefix="envelope-regions-bad-")
        try:
            r = subprocess.run([envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{free_port()}",
                                "--http-addr", "off", "--data-dir", os.path.join(d, "data"), *regions],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 64, (regions, r.returncode, r.stderr)
            assert "invalid configuration" in r.stderr and "region" in r.stderr, r.stderr
        finally:
            shutil.rmtree(d, ignore_errors=True)


def test_kms_migrate_copies_one_region_s_store(kms):
    kms.client(WEST).list_keys()  # serving (its signal handlers are in place): a SIGTERM stops it cleanly
    kms.stop()
    try:
        target = os.path.join(kms.dir, "copy")
        r = subprocess.run([envelope_bin(), "kms", "migrate", "--data-dir", os.path.join(kms.dir, "data"),
                            "--region", WEST, "--from", "sqlite", "--to", f"sqlite:{target}"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert os.path.join(kms.dir, "data", "regions", WEST) in r.stdout, r.stdout
        assert os.path.isfile(os.path.join(target, "regions", WEST, "keystore.db")), r.stdout
        copied = int(r.stdout.split("copied ")[1].split(" key")[0])
        # Every key of the west region, and none of the others.
        kms.start("--region", HOME, "--region", f"{WEST},{EU}")
        west_ids = {k["KeyId"] for k in kms.client(WEST).list_keys()["Keys"]}
        assert copied == len(west_ids) > 0, (copied, west_ids, r.stdout)
    finally:
        if kms.p.poll() is not None:
            kms.start("--region", HOME, "--region", f"{WEST},{EU}")
