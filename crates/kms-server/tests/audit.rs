//! The audit log against a real server: no state change without its record (fail-closed on a
//! sink that refuses writes), and each record shape checked against CloudTrail's fields.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use std::sync::Arc;

use envelope_keystore::KeyStore;
use envelope_kms_server::audit::AuditLog;
use envelope_kms_server::{Config, Operation};
use envelope_test_support::kms::*;
use serde_json::{Value, json};

/// Everything observable about the keys and aliases, through a server without an audit log.
async fn world(h: &KeyServer) -> Value {
    let mut keys = Vec::new();
    for k in h.call("ListKeys", json!({})).await.ok()["Keys"].as_array().unwrap() {
        let id = json!({"KeyId": k["KeyId"]});
        keys.push(json!({
            "meta": h.call("DescribeKey", id.clone()).await.ok(),
            "policy": h.call("GetKeyPolicy", id.clone()).await.ok(),
            "tags": h.call("ListResourceTags", id.clone()).await.ok(),
            "rotation": h.call("GetKeyRotationStatus", id.clone()).await.ok(),
            "rotations": h.call("ListKeyRotations", json!({"KeyId": k["KeyId"], "IncludeKeyMaterial": "ALL_KEY_MATERIAL"})).await.ok(),
            "grants": h.call("ListGrants", id.clone()).await.ok(),
        }));
    }
    json!({"keys": keys, "aliases": h.call("ListAliases", json!({})).await.ok()})
}

fn key_id(v: &Value) -> String {
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

/// One request per state-changing operation, each set up (through `helper`) so that it would
/// succeed if its audit record could be written.
async fn state_changes(helper: &KeyServer) -> Vec<(&'static str, Value)> {
    let k = key_id(&helper.call("CreateKey", json!({})).await.ok());
    let k2 = key_id(&helper.call("CreateKey", json!({})).await.ok());
    helper.call("CreateAlias", json!({"AliasName": "alias/a", "TargetKeyId": k})).await.ok();
    let pending = key_id(&helper.call("CreateKey", json!({})).await.ok());
    helper.call("ScheduleKeyDeletion", json!({"KeyId": pending, "PendingWindowInDays": 7})).await.ok();
    let disabled = key_id(&helper.call("CreateKey", json!({})).await.ok());
    helper.call("DisableKey", json!({"KeyId": disabled})).await.ok();
    let rotating = key_id(&helper.call("CreateKey", json!({})).await.ok());
    helper.call("EnableKeyRotation", json!({"KeyId": rotating})).await.ok();
    helper.call("TagResource", json!({"KeyId": k2, "Tags": [{"TagKey": "team", "TagValue": "a"}]})).await.ok();
    let external = key_id(&helper.call("CreateKey", json!({"Origin": "EXTERNAL"})).await.ok());
    let (public, token) = import_params(helper, &external, "RSAES_OAEP_SHA_256", "RSA_2048").await;
    let wrapped = b64(&wrap(&public, "RSAES_OAEP_SHA_256", &[7u8; 32]));
    let imported = key_id(&helper.call("CreateKey", json!({"Origin": "EXTERNAL"})).await.ok());
    import(helper, &imported, "RSAES_OAEP_SHA_256", &[9u8; 32]).await.ok();
    let policy =
        json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]})
            .to_string();
    let grant = json!({"KeyId": k2, "GranteePrincipal": ADMIN, "Operations": ["Decrypt"]});
    let retired = helper.call("CreateGrant", grant.clone()).await.ok();
    let revoked = helper.call("CreateGrant", grant).await.ok();
    // In an order in which each succeeds after the ones before it.
    vec![
        ("CreateKey", json!({"Description": "new"})),
        ("CreateAlias", json!({"AliasName": "alias/new", "TargetKeyId": k})),
        ("UpdateAlias", json!({"AliasName": "alias/a", "TargetKeyId": k2})),
        ("DeleteAlias", json!({"AliasName": "alias/a"})),
        ("CancelKeyDeletion", json!({"KeyId": pending})),
        ("UpdateKeyDescription", json!({"KeyId": k, "Description": "changed"})),
        ("EnableKey", json!({"KeyId": disabled})),
        ("EnableKeyRotation", json!({"KeyId": k})),
        ("DisableKeyRotation", json!({"KeyId": rotating})),
        ("RotateKeyOnDemand", json!({"KeyId": k})),
        (
            "ImportKeyMaterial",
            json!({"KeyId": external, "ImportToken": token, "EncryptedKeyMaterial": wrapped, "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}),
        ),
        ("DeleteImportedKeyMaterial", json!({"KeyId": imported})),
        ("TagResource", json!({"KeyId": k, "Tags": [{"TagKey": "x", "TagValue": "y"}]})),
        ("UntagResource", json!({"KeyId": k2, "TagKeys": ["team"]})),
        ("PutKeyPolicy", json!({"KeyId": k, "PolicyName": "default", "Policy": policy})),
        ("CreateGrant", json!({"KeyId": k, "GranteePrincipal": ADMIN, "Operations": ["Encrypt"]})),
        ("RetireGrant", json!({"GrantToken": retired["GrantToken"]})),
        ("RevokeGrant", json!({"KeyId": k2, "GrantId": revoked["GrantId"]})),
        ("DisableKey", json!({"KeyId": k})),
        ("ScheduleKeyDeletion", json!({"KeyId": k, "PendingWindowInDays": 7})),
    ]
}

/// Two servers over one key store: `helper` without an audit log (set-up and inspection), and
/// `audited` writing its records to `log`.
async fn pair(log: AuditLog) -> (KeyServer, KeyServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(KeyStore::open(&dir.path().join("data")).unwrap());
    let helper = start_on(store.clone(), Config::new(REGION, ACCOUNT), default_credentials(), None).await;
    let audited = start_on(store, Config::new(REGION, ACCOUNT), default_credentials(), Some(log)).await;
    (helper, audited, dir)
}

#[tokio::test]
async fn no_state_change_happens_when_its_audit_record_cannot_be_written() {
    let (helper, audited, _dir) = pair(AuditLog::open(std::path::Path::new("/dev/full"), true).unwrap()).await;
    let cases = state_changes(&helper).await;
    // Every state-changing operation the server knows is exercised here.
    let mutating: Vec<&str> = Operation::ALL.iter().filter(|o| o.mutates()).map(|o| o.name()).collect();
    let mut covered: Vec<&str> = cases.iter().map(|(op, _)| *op).collect();
    covered.sort_unstable();
    let mut want = mutating.clone();
    want.sort_unstable();
    assert_eq!(covered, want);

    for (op, body) in &cases {
        let before = world(&helper).await;
        let r = audited.call(op, body.clone()).await;
        assert_eq!((r.status, r.error_type()), (500, "KMSInternalException"), "{op}: {}", r.json);
        assert_eq!(r.json["message"], "The request was refused because its audit record could not be written.");
        assert_eq!(world(&helper).await, before, "{op} changed state without an audit record");
    }
    // The same requests succeed where the audit log is not in the way: the refusals were its doing.
    for (op, body) in cases {
        let r = helper.call(op, body).await;
        assert_eq!(r.status, 200, "{op}: {}", r.json);
    }
    // Reads are refused too (a Decrypt's plaintext is never released unaudited).
    let k = key_id(&helper.call("CreateKey", json!({})).await.ok());
    let ct = helper.call("Encrypt", json!({"KeyId": k, "Plaintext": b64(b"x")})).await.ok()["CiphertextBlob"].clone();
    let r = audited.call("Decrypt", json!({"CiphertextBlob": ct})).await;
    assert_eq!((r.status, r.error_type()), (500, "KMSInternalException"));
    assert!(r.json.get("Plaintext").is_none());
    let metrics = audited.server.metrics().encode();
    // Each refused state change failed twice (its intent, then the record of its refusal); the
    // Decrypt once.
    assert!(metrics.contains(&format!("envelope_kms_audit_write_failures_total {}", 2 * want.len() + 1)), "{metrics}");
}

#[tokio::test]
async fn without_fail_closed_a_failed_audit_write_does_not_block_requests() {
    let (helper, audited, _dir) = pair(AuditLog::open(std::path::Path::new("/dev/full"), false).unwrap()).await;
    let k = key_id(&audited.call("CreateKey", json!({})).await.ok());
    audited.call("DisableKey", json!({"KeyId": k})).await.ok();
    let m = helper.call("DescribeKey", json!({"KeyId": k})).await.ok();
    assert_eq!(m["KeyMetadata"]["KeyState"], "Disabled");
}

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The fields every CloudTrail record of a KMS API call carries (spec §7).
fn assert_cloudtrail_shape(r: &Value) {
    for field in [
        "eventVersion",
        "userIdentity",
        "eventTime",
        "eventSource",
        "eventName",
        "awsRegion",
        "sourceIPAddress",
        "userAgent",
        "requestParameters",
        "responseElements",
        "requestID",
        "eventID",
        "readOnly",
        "resources",
        "eventType",
        "managementEvent",
        "recipientAccountId",
        "eventCategory",
    ] {
        assert!(r.get(field).is_some(), "{field} missing in {r}");
    }
    assert_eq!(r["eventVersion"], "1.11");
    assert_eq!(r["eventSource"], "kms.amazonaws.com");
    assert_eq!(r["awsRegion"], REGION);
    assert_eq!(r["eventType"], "AwsApiCall");
    assert_eq!(r["managementEvent"], true);
    assert_eq!(r["eventCategory"], "Management");
    assert_eq!(r["recipientAccountId"], ACCOUNT);
    assert_eq!(r["sourceIPAddress"], "127.0.0.1");
    let t = r["eventTime"].as_str().unwrap();
    assert!(t.len() == 20 && t.ends_with('Z') && &t[10..11] == "T", "{t}");
    assert!(uuid::Uuid::parse_str(r["eventID"].as_str().unwrap()).is_ok());
    assert!(uuid::Uuid::parse_str(r["requestID"].as_str().unwrap()).is_ok());
    for res in r["resources"].as_array().unwrap() {
        assert_eq!(res["type"], "AWS::KMS::Key");
        assert_eq!(res["accountId"], ACCOUNT);
    }
}

fn arns(r: &Value) -> Vec<String> {
    r["resources"].as_array().unwrap().iter().map(|x| x["ARN"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn record_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let h =
        start_custom(Config::new(REGION, ACCOUNT), default_credentials(), Some(AuditLog::open(&path, true).unwrap()))
            .await;

    // A state change: an intent record before, an outcome record after, one request id.
    let created = h.call("CreateKey", json!({"Description": "audited"})).await.ok();
    let arn = created["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    let id = key_id(&created);
    let recs = records(&path);
    assert_eq!(recs.len(), 2);
    let (intent, outcome) = (&recs[0], &recs[1]);
    for r in [intent, outcome] {
        assert_cloudtrail_shape(r);
        assert_eq!(r["eventName"], "CreateKey");
        assert_eq!(r["readOnly"], false);
        assert_eq!(r["userIdentity"]["type"], "IAMUser");
        assert_eq!(r["userIdentity"]["arn"], ADMIN);
        assert_eq!(r["userIdentity"]["accessKeyId"], AKID);
        assert_eq!(r["userIdentity"]["userName"], "admin");
        assert_eq!(r["requestParameters"]["description"], "audited");
    }
    assert_eq!(intent["requestID"], outcome["requestID"]);
    assert_eq!(intent["additionalEventData"]["auditStage"], "intent");
    assert_eq!(intent["responseElements"], Value::Null);
    assert_eq!(intent["resources"], json!([]));
    assert_eq!(outcome["additionalEventData"]["auditStage"], "outcome");
    assert_eq!(outcome["responseElements"]["keyMetadata"]["arn"], arn);
    assert_eq!(arns(outcome), [arn.as_str()]);
    assert!(outcome.get("errorCode").is_none());

    // A cryptographic call by alias: one record, the resolved key in resources, no secrets.
    h.call("CreateAlias", json!({"AliasName": "alias/shape", "TargetKeyId": id})).await.ok();
    let e = h
        .call(
            "Encrypt",
            json!({"KeyId": "alias/shape", "Plaintext": b64(b"very secret"), "EncryptionContext": {"app": "web"}}),
        )
        .await
        .ok();
    let recs = records(&path);
    let r = recs.last().unwrap();
    assert_cloudtrail_shape(r);
    assert_eq!(r["eventName"], "Encrypt");
    assert_eq!(r["readOnly"], true);
    assert!(r.get("additionalEventData").is_none());
    assert_eq!(r["requestParameters"]["keyId"], "alias/shape");
    assert_eq!(r["requestParameters"]["encryptionContext"]["app"], "web");
    assert_eq!(r["requestParameters"]["encryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    assert_eq!(r["responseElements"], Value::Null);
    assert_eq!(arns(r), [arn.as_str()]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&b64(b"very secret")) && !text.contains(e["CiphertextBlob"].as_str().unwrap()));

    // Denied: the record names the key the request was refused on.
    let policy =
        json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]});
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": policy.to_string()})).await.ok();
    h.call_as(APP_AKID, "Decrypt", json!({"CiphertextBlob": e["CiphertextBlob"], "EncryptionContext": {"app": "web"}}))
        .await
        .err("AccessDeniedException");
    let recs = records(&path);
    let r = recs.last().unwrap();
    assert_cloudtrail_shape(r);
    assert_eq!(r["eventName"], "Decrypt");
    assert_eq!(r["errorCode"], "AccessDeniedException");
    assert!(r["errorMessage"].as_str().unwrap().contains(&arn));
    assert_eq!(r["userIdentity"]["arn"], APP);
    assert_eq!(arns(r), [arn.as_str()]);

    // A denied alias move names both keys it touched (the alias's current key first).
    let (other, _) = create_key(&h).await;
    h.call_as(APP_AKID, "UpdateAlias", json!({"AliasName": "alias/shape", "TargetKeyId": other}))
        .await
        .err("AccessDeniedException");
    let recs = records(&path);
    let (intent, outcome) = (&recs[recs.len() - 2], &recs[recs.len() - 1]);
    assert_eq!(intent["additionalEventData"]["auditStage"], "intent");
    assert_eq!(outcome["errorCode"], "AccessDeniedException");
    assert_eq!(arns(outcome), [arn.as_str()], "refused on the current key before the new one was checked");

    // Unauthenticated: the operation from X-Amz-Target and the access key id it claimed.
    let wrong = Signer { secret: "not-the-secret-0000000000000000000000000", ..Signer::default() };
    let r = h.call_with("DisableKey", json!({"KeyId": id}).to_string().into_bytes(), &wrong).await;
    assert_eq!(r.error_type(), "InvalidSignatureException");
    let unknown = Signer { akid: "AKIAUNKNOWNUNKNOWN00", ..Signer::default() };
    h.call_with("ScheduleKeyDeletion", json!({"KeyId": id}).to_string().into_bytes(), &unknown)
        .await
        .err("UnrecognizedClientException");
    let recs = records(&path);
    let (bad_sig, bad_key) = (&recs[recs.len() - 2], &recs[recs.len() - 1]);
    for (r, op, akid, code) in [
        (bad_sig, "DisableKey", AKID, "InvalidSignatureException"),
        (bad_key, "ScheduleKeyDeletion", "AKIAUNKNOWNUNKNOWN00", "UnrecognizedClientException"),
    ] {
        assert_cloudtrail_shape(r);
        assert_eq!(r["eventName"], op);
        assert_eq!(r["userIdentity"], json!({"type": "Unknown", "accessKeyId": akid}));
        assert_eq!(r["errorCode"], code);
        assert!(r.get("additionalEventData").is_none(), "no intent record before authentication");
    }
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["KeyState"], "Enabled");
}

/// Multi-material import and on-demand rotation of imported material are audited like the
/// rest: CloudTrail's member names for ImportType, KeyMaterialDescription and KeyMaterialId in
/// the request, the key ARN and the material id in the response, never the material or token.
#[tokio::test]
async fn imported_material_rotation_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let h =
        start_custom(Config::new(REGION, ACCOUNT), default_credentials(), Some(AuditLog::open(&path, true).unwrap()))
            .await;
    let id = key_id(&h.call("CreateKey", json!({"Origin": "EXTERNAL"})).await.ok());
    let m1 =
        import(&h, &id, "RSAES_OAEP_SHA_256", &[1u8; 32]).await.ok()["KeyMaterialId"].as_str().unwrap().to_string();
    let (public, token) = import_params(&h, &id, "RSAES_OAEP_SHA_256", "RSA_2048").await;
    let wrapped = b64(&wrap(&public, "RSAES_OAEP_SHA_256", &[2u8; 32]));
    let body = json!({"KeyId": id, "ImportToken": token, "EncryptedKeyMaterial": wrapped,
        "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE", "ImportType": "NEW_KEY_MATERIAL",
        "KeyMaterialDescription": "second"});
    let m2 = h.call("ImportKeyMaterial", body).await.ok()["KeyMaterialId"].as_str().unwrap().to_string();
    let last = |op: &str| records(&path).into_iter().rev().find(|r| r["eventName"] == op).unwrap();
    let r = last("ImportKeyMaterial");
    assert_cloudtrail_shape(&r);
    assert_eq!(
        (r["requestParameters"]["importType"].as_str(), r["requestParameters"]["keyMaterialDescription"].as_str()),
        (Some("NEW_KEY_MATERIAL"), Some("second"))
    );
    assert!(
        r["requestParameters"].get("importToken").is_none()
            && r["requestParameters"].get("encryptedKeyMaterial").is_none()
    );
    assert_eq!(r["responseElements"]["keyMaterialId"], m2.as_str());

    h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.ok();
    let r = last("RotateKeyOnDemand");
    assert_eq!(
        (r["readOnly"].as_bool(), r["responseElements"]["keyId"].as_str().map(|a| a.ends_with(&id))),
        (Some(false), Some(true))
    );

    h.call("DeleteImportedKeyMaterial", json!({"KeyId": id, "KeyMaterialId": m1})).await.ok();
    let recs = records(&path);
    let deletes: Vec<_> = recs.iter().filter(|r| r["eventName"] == "DeleteImportedKeyMaterial").collect();
    assert_eq!(deletes.len(), 2, "an intent and an outcome record");
    assert_eq!(deletes[0]["additionalEventData"]["auditStage"], "intent");
    for r in &deletes {
        assert_eq!(r["requestParameters"]["keyMaterialId"], m1.as_str());
    }
    assert_eq!(deletes[1]["responseElements"]["keyMaterialId"], m1.as_str());
    // A refused call is recorded with its error.
    h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    let r = last("RotateKeyOnDemand");
    assert_eq!(r["errorCode"], "KMSInvalidStateException");
}
