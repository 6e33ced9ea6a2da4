"""Grants on `envelope kms serve`, with boto3 and the aws CLI: the attacks first (a grantee
escalating through CreateGrant, retiring someone else's grant, a grant on one key used on
another, a grant token from another key, an explicit Deny against a grant), then the lifecycle,
paging and the error paths.

Credentials: the admin (identity policy kms:*), and principals whose identity policies allow no
key operation at all (ListKeys only), so whatever they do on a key comes from a grant.
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
from test_kms_server import ACCOUNT, REGION, _aws_cli

ADMIN = f"arn:aws:iam::{ACCOUNT}:user/admin"
GRANTEE = f"arn:aws:iam::{ACCOUNT}:user/grantee"
RETIRER = f"arn:aws:iam::{ACCOUNT}:user/retirer"
BYSTANDER = f"arn:aws:iam::{ACCOUNT}:user/bystander"
DENIED = f"arn:aws:iam::{ACCOUNT}:user/denied"
DELEGATED = f"arn:aws:iam::{ACCOUNT}:user/delegated"

KEYS = {
    ADMIN: ("AKIAENVELOPEGRANT001", "grant-admin-secret-0123456789abcdefghijk"),
    GRANTEE: ("AKIAENVELOPEGRANT002", "grant-grantee-secret-0123456789abcdefghi"),
    RETIRER: ("AKIAENVELOPEGRANT003", "grant-retirer-secret-0123456789abcdefghi"),
    BYSTANDER: ("AKIAENVELOPEGRANT004", "grant-bystander-secret-0123456789abcdefg"),
    DENIED: ("AKIAENVELOPEGRANT005", "grant-denied-secret-0123456789abcdefghij"),
    DELEGATED: ("AKIAENVELOPEGRANT006", "grant-delegated-secret-0123456789abcdefg"),
}

NOTHING_ON_KEYS = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:ListKeys","Resource":"*"}]}'
DENY_DECRYPT = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:ListKeys","Resource":"*"},'
                '{"Effect":"Deny","Action":"kms:Decrypt","Resource":"*"}]}')
POLICIES = {
    ADMIN: '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}',
    GRANTEE: NOTHING_ON_KEYS,
    RETIRER: NOTHING_ON_KEYS,
    BYSTANDER: NOTHING_ON_KEYS,
    DENIED: DENY_DECRYPT,
    DELEGATED: '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt"],'
               f'"Resource":"arn:aws:kms:{REGION}:{ACCOUNT}:key/*"}}]}}',
}


@pytest.fixture(scope="module")
def server():
    d = tempfile.mkdtemp(prefix="envelope-grants-")
    creds = os.path.join(d, "credentials.yaml")
    with open(creds, "w") as f:
        for principal, (akid, secret) in KEYS.items():
            f.write(f"- access_key_id: {akid}\n  secret_access_key: '{secret}'\n  principal: {principal}\n"
                    f"  policy: '{POLICIES[principal]}'\n")
    os.chmod(creds, 0o600)
    port = free_port()
    log = open(os.path.join(d, "stderr.log"), "w")
    p = subprocess.Popen(
        [envelope_bin(), "kms", "serve", "--listen", f"127.0.0.1:{port}", "--http-addr", "off",
         "--data-dir", os.path.join(d, "data"), "--credentials", creds, "--region", REGION, "--account-id", ACCOUNT],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    wait_listening(p, port)
    yield f"http://127.0.0.1:{port}"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0
    log.close()
    shutil.rmtree(d, ignore_errors=True)


def _client(url, who):
    akid, secret = KEYS[who]
    return boto3.client("kms", endpoint_url=url, region_name=REGION, aws_access_key_id=akid,
                        aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))


def _code(e):
    return e.value.response["Error"]["Code"]


def _denied(f, *args, **kwargs):
    with pytest.raises(ClientError) as e:
        f(*args, **kwargs)
    assert _code(e) == "AccessDeniedException", e.value.response["Error"]
    return e.value.response["Error"]["Message"]


def _fails(code, f, *args, **kwargs):
    with pytest.raises(ClientError) as e:
        f(*args, **kwargs)
    assert _code(e) == code, e.value.response["Error"]
    return e.value.response["Error"]["Message"]


def _key(admin, policy=None):
    kwargs = {"Policy": json.dumps(policy)} if policy else {}
    return admin.create_key(Description="grants", **kwargs)["KeyMetadata"]


# --- attacks ---------------------------------------------------------------------------------


def test_grantee_cannot_escalate_through_create_grant(server):
    admin, grantee = _client(server, ADMIN), _client(server, GRANTEE)
    k = _key(admin)
    other = _key(admin)
    admin.create_grant(KeyId=k["KeyId"], GranteePrincipal=GRANTEE, Operations=["Decrypt", "CreateGrant"])
    # Without a grant of its own, the grantee can do nothing on the key.
    _denied(grantee.encrypt, KeyId=k["KeyId"], Plaintext=b"x")
    # More operations than its grant has: refused, also for itself and for a third party.
    for ops in (["Decrypt", "Encrypt"], ["Encrypt"], ["Decrypt", "RetireGrant"], ["DescribeKey"]):
        for who in (GRANTEE, BYSTANDER):
            msg = _denied(grantee.create_grant, KeyId=k["KeyId"], GranteePrincipal=who, Operations=ops)
            assert "kms:CreateGrant" in msg
    # On another key, its grant means nothing.
    _denied(grantee.create_grant, KeyId=other["KeyId"], GranteePrincipal=BYSTANDER, Operations=["Decrypt"])
    # What it has, it may pass on.
    g = grantee.create_grant(KeyId=k["KeyId"], GranteePrincipal=BYSTANDER, Operations=["Decrypt"])
    listed = admin.list_grants(KeyId=k["KeyId"], GrantId=g["GrantId"])["Grants"]
    assert [x["Operations"] for x in listed] == [["Decrypt"]]
    assert listed[0]["GranteePrincipal"] == BYSTANDER
    # Still nothing more than Decrypt: the encrypt that escalation would have allowed fails.
    _denied(grantee.encrypt, KeyId=k["KeyId"], Plaintext=b"x")
    _denied(_client(server, BYSTANDER).encrypt, KeyId=k["KeyId"], Plaintext=b"x")


def test_constrained_create_grant_passes_on_only_as_strict_constraints(server):
    admin, grantee = _client(server, ADMIN), _client(server, GRANTEE)
    k = _key(admin)
    web = {"app": "web"}
    admin.create_grant(KeyId=k["KeyId"], GranteePrincipal=GRANTEE, Operations=["Encrypt", "Decrypt", "CreateGrant"],
                       Constraints={"EncryptionContextSubset": web})
    _denied(grantee.create_grant, KeyId=k["KeyId"], GranteePrincipal=BYSTANDER, Operations=["Decrypt"])
    _denied(grantee.create_grant, KeyId=k["KeyId"], GranteePrincipal=BYSTANDER, Operations=["Decrypt"],
            Constraints={"EncryptionContextSubset": {"app": "db"}})
    grantee.create_grant(KeyId=k["KeyId"], GranteePrincipal=BYSTANDER, Operations=["Decrypt"],
                         Constraints={"EncryptionContextEquals": {"app": "web", "tier": "1"}})


def test_nobody_retires_or_revokes_someone_elses_grant(server):
    admin, grantee = _client(server, ADMIN), _client(server, GRANTEE)
    bystander, retirer = _client(server, BYSTANDER), _client(server, RETIRER)
    k = _key(admin)
    g = admin.create_grant(KeyId=k["KeyId"], GranteePrincipal=GRANTEE, RetiringPrincipal=RETIRER,
                           Operations=["Encrypt", "Decrypt"])
    for c in (bystander, grantee):  # the grantee's grant does not include RetireGrant
        _denied(c.retire_grant, KeyId=k["KeyId"], GrantId=g["GrantId"])
        _denied(c.retire_grant, GrantToken=g["GrantToken"])
        _denied(c.revoke_grant, KeyId=k["KeyId"], GrantId=g["GrantId"])
    # The retiring principal cannot revoke (that takes kms:RevokeGrant), nor list.
    _denied(retirer.revoke_grant, KeyId=k["KeyId"], GrantId=g["GrantId"])
    _denied(retirer.list_grants, KeyId=k["KeyId"])
    # The grant still works.
    ct = grantee.encrypt(KeyId=k["KeyId"], Plaintext=b"still")["CiphertextBlob"]
    # A retiring principal of one grant retires nothing else: a grant naming another retirer.
    other = admin.create_grant(KeyId=k["KeyId"], GranteePrincipal=BYSTANDER, RetiringPrincipal=ADMIN,
                               Operations=["Decrypt"])
    _denied(retirer.retire_grant, KeyId=k["KeyId"], GrantId=other["GrantId"])
    # The retiring principal retires it; then it allows nothing.
    retirer.retire_grant(KeyId=k["KeyId"], GrantId=g["GrantId"])
    _denied(grantee.decrypt, CiphertextBlob=ct)
    _denied(grantee.encrypt, KeyId=k["KeyId"], Plaintext=b"x")
    _fails("NotFoundException", retirer.retire_grant, GrantToken=g["GrantToken"])


def test_a_grant_on_one_key_opens_no_other_key(server):
    admin, grantee = _client(server, ADMIN), _client(server, GRANTEE)
    a, b = _key(admin), _key(admin)
    ga = admin.create_grant(KeyId=a["KeyId"], GranteePrincipal=GRANTEE,
                            Operations=["Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey", "ReEncryptFrom",
                                        "ReEncryptTo"])
    # Key A: through the grant, with or without its token.
    ct_a = grantee.encrypt(KeyId=a["KeyId"], Plaintext=b"a")["CiphertextBlob"]
    assert grantee.decrypt(CiphertextBlob=ct_a, GrantTokens=[ga["GrantToken"]])["Plaintext"] == b"a"
    assert grantee.describe_key(KeyId=a["Arn"], GrantTokens=[ga["GrantToken"]])["KeyMetadata"]["KeyId"] == a["KeyId"]
    assert grantee.generate_data_key(KeyId=a["KeyId"], KeySpec="AES_256")["KeyId"] == a["Arn"]
    # Key B: nothing, not even with key A's grant token.
    ct_b = admin.encrypt(KeyId=b["KeyId"], Plaintext=b"b")["CiphertextBlob"]
    for tokens in ([], [ga["GrantToken"]]):
        _denied(grantee.encrypt, KeyId=b["KeyId"], Plaintext=b"x", GrantTokens=tokens)
        _denied(grantee.decrypt, CiphertextBlob=ct_b, GrantTokens=tokens)
        _denied(grantee.describe_key, KeyId=b["KeyId"], GrantTokens=tokens)
        _denied(grantee.generate_data_key, KeyId=b["KeyId"], KeySpec="AES_256", GrantTokens=tokens)
        # ReEncrypt into or out of B needs B's permission too.
        _denied(grantee.re_encrypt, CiphertextBlob=ct_a, DestinationKeyId=b["KeyId"], GrantTokens=tokens)
        _denied(grantee.re_encrypt, CiphertextBlob=ct_b, DestinationKeyId=a["KeyId"], GrantTokens=tokens)
    assert grantee.re_encrypt(CiphertextBlob=ct_a, DestinationKeyId=a["KeyId"])["KeyId"] == a["Arn"]
    # Retiring A's grant with B's key id: not found there.
    _fails("NotFoundException", admin.retire_grant, KeyId=b["KeyId"], GrantId=ga["GrantId"])
    _fails("NotFoundException", admin.revoke_grant, KeyId=b["KeyId"], GrantId=ga["GrantId"])
    # A token this server did not issue is refused on every operation that takes them.
    for f, kw in ((grantee.encrypt, {"KeyId": a["KeyId"], "Plaintext": b"x"}),
                  (grantee.decrypt, {"CiphertextBlob": ct_a}),
                  (grantee.describe_key, {"KeyId": a["KeyId"]}),
                  (admin.create_grant, {"KeyId": a["KeyId"], "GranteePrincipal": GRANTEE, "Operations": ["Decrypt"]})):
        _fails("InvalidGrantTokenException", f, GrantTokens=["not-a-grant-token"], **kw)


def test_an_explicit_deny_beats_a_grant(server):
    admin, grantee, denied = _client(server, ADMIN), _client(server, GRANTEE), _client(server, DENIED)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": GRANTEE}, "Action": "kms:Decrypt", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": GRANTEE}, "Action": "kms:CreateGrant", "Resource": "*"}]}
    k = _key(admin, policy)
    admin.create_grant(KeyId=k["KeyId"], GranteePrincipal=GRANTEE, Operations=["Encrypt", "Decrypt", "CreateGrant"])
    ct = grantee.encrypt(KeyId=k["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    msg = _denied(grantee.decrypt, CiphertextBlob=ct)
    assert "explicit deny in a resource-based policy" in msg
    _denied(grantee.create_grant, KeyId=k["KeyId"], GranteePrincipal=BYSTANDER, Operations=["Decrypt"])
    # An explicit Deny in the identity policy wins too.
    k2 = _key(admin)
    admin.create_grant(KeyId=k2["KeyId"], GranteePrincipal=DENIED, Operations=["Encrypt", "Decrypt"])
    ct2 = denied.encrypt(KeyId=k2["KeyId"], Plaintext=b"y")["CiphertextBlob"]
    assert "explicit deny in an identity-based policy" in _denied(denied.decrypt, CiphertextBlob=ct2)


def test_a_grant_to_the_account_needs_the_identity_policy_too(server):
    admin = _client(server, ADMIN)
    grantee, delegated = _client(server, GRANTEE), _client(server, DELEGATED)
    only_admin = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]}
    k = _key(admin, only_admin)
    # The key policy names only the admin: the delegated principal's identity policy alone opens nothing.
    _denied(delegated.encrypt, KeyId=k["KeyId"], Plaintext=b"x")
    admin.create_grant(KeyId=k["KeyId"], GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:root", Operations=["Encrypt"])
    # A grant to the account: its principals whose identity policy allows the operation.
    delegated.encrypt(KeyId=k["KeyId"], Plaintext=b"x")
    _denied(grantee.encrypt, KeyId=k["KeyId"], Plaintext=b"x")
    # Not beyond the grant's operations, whatever the identity policy allows.
    ct = admin.encrypt(KeyId=k["KeyId"], Plaintext=b"y")["CiphertextBlob"]
    _denied(delegated.decrypt, CiphertextBlob=ct)


# --- the lifecycle ---------------------------------------------------------------------------


def test_lifecycle_with_constraints_idempotency_retire_and_revoke(server):
    admin, grantee = _client(server, ADMIN), _client(server, GRANTEE)
    k = _key(admin)
    web = {"app": "web"}
    g = admin.create_grant(KeyId=k["Arn"], GranteePrincipal=GRANTEE, RetiringPrincipal=RETIRER,
                           Operations=["Encrypt", "Decrypt", "RetireGrant"], Name="web-grant",
                           Constraints={"EncryptionContextSubset": web})
    assert len(g["GrantId"]) == 64 and g["GrantToken"]
    # A retry (same name, same parameters): the same grant, a new token.
    again = admin.create_grant(KeyId=k["KeyId"], GranteePrincipal=GRANTEE, RetiringPrincipal=RETIRER,
                               Operations=["Decrypt", "Encrypt", "RetireGrant"], Name="web-grant",
                               Constraints={"EncryptionContextSubset": web})
    assert again["GrantId"] == g["GrantId"] and again["GrantToken"] != g["GrantToken"]
    # Other parameters under the same name: a new grant.
    other = admin.create_grant(KeyId=k["KeyId"], GranteePrincipal=GRANTEE, Operations=["Decrypt"], Name="web-grant",
                               Constraints={"EncryptionContextEquals": {"app": "db"}})
    assert other["GrantId"] != g["GrantId"]

    grants = admin.list_grants(KeyId=k["KeyId"])["Grants"]
    assert [x["GrantId"] for x in grants] == [g["GrantId"], other["GrantId"]] or \
        sorted(x["GrantId"] for x in grants) == sorted([g["GrantId"], other["GrantId"]])
    entry = next(x for x in grants if x["GrantId"] == g["GrantId"])
    assert entry["KeyId"] == k["Arn"]
    assert entry["Name"] == "web-grant"
    assert entry["GranteePrincipal"] == GRANTEE and entry["RetiringPrincipal"] == RETIRER
    assert entry["IssuingAccount"] == f"arn:aws:iam::{ACCOUNT}:root"
    assert sorted(entry["Operations"]) == ["Decrypt", "Encrypt", "RetireGrant"]
    assert entry["Constraints"] == {"EncryptionContextSubset": web}
    assert entry["CreationDate"].year >= 2024

    # Only with a matching encryption context.
    ct = grantee.encrypt(KeyId=k["KeyId"], Plaintext=b"p", EncryptionContext={"app": "web", "x": "1"})["CiphertextBlob"]
    _denied(grantee.encrypt, KeyId=k["KeyId"], Plaintext=b"p")
    _denied(grantee.encrypt, KeyId=k["KeyId"], Plaintext=b"p", EncryptionContext={"app": "WEB"})
    assert grantee.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "web", "x": "1"})["Plaintext"] == b"p"
    # The db grant (EncryptionContextEquals) allows Decrypt with exactly its context.
    ct_db = admin.encrypt(KeyId=k["KeyId"], Plaintext=b"d", EncryptionContext={"app": "db"})["CiphertextBlob"]
    assert grantee.decrypt(CiphertextBlob=ct_db, EncryptionContext={"app": "db"})["Plaintext"] == b"d"
    ct_db2 = admin.encrypt(KeyId=k["KeyId"], Plaintext=b"d", EncryptionContext={"app": "db", "y": "2"})["CiphertextBlob"]
    _denied(grantee.decrypt, CiphertextBlob=ct_db2, EncryptionContext={"app": "db", "y": "2"})
    # Not a DescribeKey grant.
    _denied(grantee.describe_key, KeyId=k["KeyId"])
    # A disabled key: the grant authorizes, the key state refuses.
    admin.disable_key(KeyId=k["KeyId"])
    _fails("DisabledException", grantee.encrypt, KeyId=k["KeyId"], Plaintext=b"p", EncryptionContext=web)
    admin.enable_key(KeyId=k["KeyId"])

    # The grantee retires its own grant (it includes RetireGrant), by token; then it is gone.
    grantee.retire_grant(GrantToken=g["GrantToken"])
    _denied(grantee.encrypt, KeyId=k["KeyId"], Plaintext=b"p", EncryptionContext=web)
    _denied(grantee.decrypt, CiphertextBlob=ct, EncryptionContext={"app": "web", "x": "1"})
    # The admin revokes the other one; then Decrypt with db's context fails too.
    admin.revoke_grant(KeyId=k["KeyId"], GrantId=other["GrantId"])
    _denied(grantee.decrypt, CiphertextBlob=ct_db, EncryptionContext={"app": "db"})
    assert admin.list_grants(KeyId=k["KeyId"])["Grants"] == []
    _fails("NotFoundException", admin.revoke_grant, KeyId=k["KeyId"], GrantId=other["GrantId"])


def test_list_grants_paging_and_filters(server):
    admin = _client(server, ADMIN)
    k = _key(admin)
    ids = [admin.create_grant(KeyId=k["KeyId"], GranteePrincipal=GRANTEE if i % 2 else BYSTANDER,
                              Operations=["Decrypt"])["GrantId"] for i in range(7)]
    seen, marker, pages = [], None, 0
    while True:
        kw = {"Marker": marker} if marker else {}
        page = admin.list_grants(KeyId=k["KeyId"], Limit=3, **kw)
        pages += 1
        assert len(page["Grants"]) <= 3
        seen += [g["GrantId"] for g in page["Grants"]]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]
    assert pages == 3
    assert sorted(seen) == sorted(ids) and len(seen) == 7
    # botocore's paginator walks the same pages.
    pag = admin.get_paginator("list_grants").paginate(KeyId=k["KeyId"], PaginationConfig={"PageSize": 2})
    assert sorted(g["GrantId"] for p in pag for g in p["Grants"]) == sorted(ids)
    only = admin.list_grants(KeyId=k["KeyId"], GranteePrincipal=GRANTEE)["Grants"]
    assert sorted(g["GrantId"] for g in only) == sorted(ids[1::2])
    assert [g["GrantId"] for g in admin.list_grants(KeyId=k["KeyId"], GrantId=ids[4])["Grants"]] == [ids[4]]
    _fails("InvalidMarkerException", admin.list_grants, KeyId=k["KeyId"], Marker="bm90LWEtbWFya2Vy")
    _fails("InvalidGrantIdException", admin.list_grants, KeyId=k["KeyId"], GrantId="x")


def test_list_retirable_grants(server):
    admin = _client(server, ADMIN)
    a, b = _key(admin), _key(admin)
    ga = admin.create_grant(KeyId=a["KeyId"], GranteePrincipal=GRANTEE, RetiringPrincipal=RETIRER,
                            Operations=["Decrypt"])["GrantId"]
    gb = admin.create_grant(KeyId=b["KeyId"], GranteePrincipal=GRANTEE, RetiringPrincipal=RETIRER,
                            Operations=["Encrypt"])["GrantId"]
    admin.create_grant(KeyId=b["KeyId"], GranteePrincipal=GRANTEE, Operations=["Encrypt"])
    out = admin.list_retirable_grants(RetiringPrincipal=RETIRER)["Grants"]
    mine = {g["GrantId"]: g["KeyId"] for g in out}
    assert mine.get(ga) == a["Arn"] and mine.get(gb) == b["Arn"]
    assert all(g["RetiringPrincipal"] == RETIRER for g in out)
    # ListRetirableGrants is an identity-policy permission: the retirer itself lacks it.
    _denied(_client(server, RETIRER).list_retirable_grants, RetiringPrincipal=RETIRER)


def test_errors(server):
    admin = _client(server, ADMIN)
    k = _key(admin)
    kid = k["KeyId"]
    _fails("ValidationException", admin.create_grant, KeyId=kid, GranteePrincipal=GRANTEE, Operations=[])
    _fails("ValidationException", admin.create_grant, KeyId=kid, GranteePrincipal=GRANTEE, Operations=["Fly"])
    msg = _fails("ValidationException", admin.create_grant, KeyId=kid, GranteePrincipal=GRANTEE, Operations=["Sign"])
    assert "Sign" in msg
    _fails("InvalidArnException", admin.create_grant, KeyId=kid, GranteePrincipal="bob", Operations=["Decrypt"])
    _fails("ValidationException", admin.create_grant, KeyId=kid, GranteePrincipal=GRANTEE, Operations=["Decrypt"],
           Name="no spaces")
    _fails("NotFoundException", admin.create_grant, KeyId="00000000-0000-0000-0000-000000000000",
           GranteePrincipal=GRANTEE, Operations=["Decrypt"])
    _fails("DryRunOperationException", admin.create_grant, KeyId=kid, GranteePrincipal=GRANTEE,
           Operations=["Decrypt"], DryRun=True)
    assert admin.list_grants(KeyId=kid)["Grants"] == [], "a dry run creates nothing"
    g = admin.create_grant(KeyId=kid, GranteePrincipal=GRANTEE, Operations=["Decrypt"])
    _fails("DryRunOperationException", admin.revoke_grant, KeyId=kid, GrantId=g["GrantId"], DryRun=True)
    _fails("DryRunOperationException", admin.retire_grant, GrantToken=g["GrantToken"], DryRun=True)
    assert len(admin.list_grants(KeyId=kid)["Grants"]) == 1
    _fails("InvalidGrantIdException", admin.revoke_grant, KeyId=kid, GrantId="not-a-grant-id")
    _fails("NotFoundException", admin.revoke_grant, KeyId=kid, GrantId="0" * 64)
    _fails("InvalidGrantTokenException", admin.retire_grant, GrantToken="garbage")
    _fails("ValidationException", admin.retire_grant, KeyId=kid)
    # A key pending deletion takes no new grant; its grants can still be listed and revoked.
    admin.schedule_key_deletion(KeyId=kid, PendingWindowInDays=7)
    _fails("KMSInvalidStateException", admin.create_grant, KeyId=kid, GranteePrincipal=GRANTEE, Operations=["Decrypt"])
    assert len(admin.list_grants(KeyId=kid)["Grants"]) == 1
    admin.revoke_grant(KeyId=kid, GrantId=g["GrantId"])


# --- the aws CLI -----------------------------------------------------------------------------


def _env(who):
    akid, secret = KEYS[who]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": akid, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
    return env


def _aws(url, who, *args, check=True):
    r = subprocess.run([_aws_cli(), "--endpoint-url", url, "kms", *args], env=_env(who), capture_output=True,
                       text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_lifecycle_with_the_aws_cli(server, tmp_path):
    key = json.loads(_aws(server, ADMIN, "create-key").stdout)["KeyMetadata"]["KeyId"]
    g = json.loads(_aws(server, ADMIN, "create-grant", "--key-id", key, "--grantee-principal", GRANTEE,
                        "--operations", "Encrypt", "Decrypt", "--retiring-principal", RETIRER,
                        "--constraints", "EncryptionContextSubset={Department=IT}", "--name", "cli-grant").stdout)
    plain = tmp_path / "p.txt"
    plain.write_bytes(b"cli secret")
    r = _aws(server, GRANTEE, "encrypt", "--key-id", key, "--plaintext", f"fileb://{plain}",
             "--encryption-context", "Department=IT", "--grant-tokens", g["GrantToken"])
    ct = json.loads(r.stdout)["CiphertextBlob"]
    r = _aws(server, GRANTEE, "encrypt", "--key-id", key, "--plaintext", f"fileb://{plain}", check=False)
    assert r.returncode != 0 and "AccessDeniedException" in r.stderr
    blob = tmp_path / "c.bin"
    import base64
    blob.write_bytes(base64.b64decode(ct))
    r = _aws(server, GRANTEE, "decrypt", "--ciphertext-blob", f"fileb://{blob}", "--encryption-context",
             "Department=IT", "--output", "text", "--query", "Plaintext")
    assert base64.b64decode(r.stdout.strip()) == b"cli secret"
    listed = json.loads(_aws(server, ADMIN, "list-grants", "--key-id", key).stdout)["Grants"]
    assert [x["GrantId"] for x in listed] == [g["GrantId"]]
    assert listed[0]["Constraints"] == {"EncryptionContextSubset": {"Department": "IT"}}
    r = _aws(server, BYSTANDER, "retire-grant", "--grant-token", g["GrantToken"], check=False)
    assert r.returncode != 0 and "AccessDeniedException" in r.stderr
    retirable = json.loads(_aws(server, ADMIN, "list-retirable-grants", "--retiring-principal", RETIRER).stdout)
    assert g["GrantId"] in [x["GrantId"] for x in retirable["Grants"]]
    _aws(server, RETIRER, "retire-grant", "--key-id", key, "--grant-id", g["GrantId"])
    r = _aws(server, GRANTEE, "decrypt", "--ciphertext-blob", f"fileb://{blob}", "--encryption-context",
             "Department=IT", check=False)
    assert r.returncode != 0 and "AccessDeniedException" in r.stderr
    g2 = json.loads(_aws(server, ADMIN, "create-grant", "--key-id", key, "--grantee-principal", GRANTEE,
                         "--operations", "DescribeKey").stdout)
    _aws(server, GRANTEE, "describe-key", "--key-id", key)
    _aws(server, ADMIN, "revoke-grant", "--key-id", key, "--grant-id", g2["GrantId"])
    r = _aws(server, GRANTEE, "describe-key", "--key-id", key, check=False)
    assert r.returncode != 0 and "AccessDeniedException" in r.stderr
    assert json.loads(_aws(server, ADMIN, "list-grants", "--key-id", key).stdout)["Grants"] == []


def test_grants_on_hmac_and_signing_keys_carry_their_operations(server):
    admin, grantee = _client(server, ADMIN), _client(server, GRANTEE)
    mac_key = admin.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    sig_key = admin.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    _denied(grantee.generate_mac, KeyId=mac_key, MacAlgorithm="HMAC_SHA_256", Message=b"m")
    _denied(grantee.sign, KeyId=sig_key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    # Each key type takes its own operations, and no encryption-context constraint.
    msg = _fails("ValidationException", admin.create_grant, KeyId=mac_key, GranteePrincipal=GRANTEE,
                 Operations=["GenerateMac", "Decrypt"])
    assert "Decrypt" in msg and "HMAC" in msg, msg
    _fails("ValidationException", admin.create_grant, KeyId=sig_key, GranteePrincipal=GRANTEE, Operations=["GenerateMac"])
    _fails("ValidationException", admin.create_grant, KeyId=mac_key, GranteePrincipal=GRANTEE,
           Operations=["GenerateMac"], Constraints={"EncryptionContextSubset": {"a": "b"}})
    admin.create_grant(KeyId=mac_key, GranteePrincipal=GRANTEE, Operations=["GenerateMac", "VerifyMac"])
    g = admin.create_grant(KeyId=sig_key, GranteePrincipal=GRANTEE, Operations=["Sign", "GetPublicKey"])
    mac = grantee.generate_mac(KeyId=mac_key, MacAlgorithm="HMAC_SHA_256", Message=b"m")["Mac"]
    assert grantee.verify_mac(KeyId=mac_key, MacAlgorithm="HMAC_SHA_256", Message=b"m", Mac=mac)["MacValid"]
    sig = grantee.sign(KeyId=sig_key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256",
                       GrantTokens=[g["GrantToken"]])["Signature"]
    assert grantee.get_public_key(KeyId=sig_key)["KeySpec"] == "ECC_NIST_P256"
    # Verify was not granted; the admin's verify checks what the grantee signed.
    _denied(grantee.verify, KeyId=sig_key, Message=b"m", Signature=sig, SigningAlgorithm="ECDSA_SHA_256")
    assert admin.verify(KeyId=sig_key, Message=b"m", Signature=sig, SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]
    # A grant on the signing key allows nothing on the HMAC key's other operations, and back.
    _denied(grantee.describe_key, KeyId=mac_key)
    admin.retire_grant(GrantToken=g["GrantToken"])
    _denied(grantee.sign, KeyId=sig_key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
