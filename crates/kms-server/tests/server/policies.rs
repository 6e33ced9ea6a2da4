//! Key policies: every key operation authorized by them, and the lockout safety check.

use envelope_test_support::kms::*;
use serde_json::json;

#[tokio::test]
async fn key_policies_authorize_every_key_operation() {
    let h = start().await;
    let (id, arn) = create_key(&h).await;
    // The default policy: the account root, i.e. every principal of the account.
    let p = h.call("GetKeyPolicy", json!({"KeyId": id})).await.ok();
    assert_eq!(p["PolicyName"], "default");
    assert!(p["Policy"].as_str().unwrap().contains("arn:aws:iam::111122223333:root"));
    assert_eq!(h.call("ListKeyPolicies", json!({"KeyId": id})).await.ok()["PolicyNames"], json!(["default"]));
    h.call_as(APP_AKID, "DescribeKey", json!({"KeyId": id})).await.ok();
    // Only the admin; the app may encrypt only with context app=web.
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": [APP]}, "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*",
         "Condition": {"StringEquals": {"kms:EncryptionContext:app": "web"}}}]});
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": policy.to_string()})).await.ok();
    let m = h.call_as(APP_AKID, "DescribeKey", json!({"KeyId": id})).await.err("AccessDeniedException");
    assert_eq!(
        m,
        format!(
            "User: {APP} is not authorized to perform: kms:DescribeKey on resource: {arn} because no resource-based policy allows the kms:DescribeKey action"
        )
    );
    h.call_as(APP_AKID, "Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.err("AccessDeniedException");
    let ct = h
        .call_as(APP_AKID, "Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x"), "EncryptionContext": {"app": "web"}}))
        .await
        .ok()["CiphertextBlob"]
        .clone();
    h.call_as(APP_AKID, "Decrypt", json!({"CiphertextBlob": ct, "EncryptionContext": {"app": "web"}})).await.ok();
    h.call_as(APP_AKID, "ScheduleKeyDeletion", json!({"KeyId": id})).await.err("AccessDeniedException");
    h.call_as(APP_AKID, "PutKeyPolicy", json!({"KeyId": id, "Policy": policy.to_string()}))
        .await
        .err("AccessDeniedException");
    // Not key-scoped: any authenticated principal.
    h.call_as(APP_AKID, "ListKeys", json!({})).await.ok();
    h.call_as(APP_AKID, "GenerateRandom", json!({"NumberOfBytes": 8})).await.ok();
    // Explicit deny wins over the admin's Allow.
    let deny = json!({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt*", "Resource": "*"}]});
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": deny.to_string()})).await.ok();
    let m = h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.err("AccessDeniedException");
    assert!(m.ends_with("with an explicit deny in a resource-based policy"), "{m}");
    h.call("Decrypt", json!({"CiphertextBlob": ct, "EncryptionContext": {"app": "web"}})).await.ok();
    // Bad documents.
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": "{not json"})).await.err("MalformedPolicyDocumentException");
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": "{\"Statement\":[]}"}))
        .await
        .err("MalformedPolicyDocumentException");
    let big = format!("{{\"Id\":\"{}\"}}", "x".repeat(33 * 1024));
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": big})).await.err("LimitExceededException");
    h.call("GetKeyPolicy", json!({"KeyId": id, "PolicyName": "other"})).await.err("NotFoundException");
    // Policy on CreateKey.
    let r = h.call("CreateKey", json!({"Policy": policy.to_string()})).await.ok();
    let k2 = r["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    h.call_as(APP_AKID, "DescribeKey", json!({"KeyId": k2})).await.err("AccessDeniedException");
    h.call("CreateKey", json!({"Policy": "[]"})).await.err("MalformedPolicyDocumentException");
}

#[tokio::test]
async fn policy_lockout_safety_check() {
    let h = start().await;
    let (id, _) = create_key(&h).await;
    // A policy that lets the admin use the key but not change its policy again.
    let locks_out = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], "Resource": "*"}]});
    let m = h
        .call("PutKeyPolicy", json!({"KeyId": id, "Policy": locks_out.to_string()}))
        .await
        .err("MalformedPolicyDocumentException");
    assert_eq!(m, "The new key policy will not allow you to update the key policy in the future.");
    // An explicit Deny of PutKeyPolicy for the caller counts too.
    let denies = json!({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": ADMIN}, "Action": "kms:PutKeyPolicy", "Resource": "*"}]});
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": denies.to_string()}))
        .await
        .err("MalformedPolicyDocumentException");
    // The policy was not changed by the refused calls.
    assert!(h.call("GetKeyPolicy", json!({"KeyId": id})).await.ok()["Policy"].as_str().unwrap().contains(":root"));
    // A policy that keeps the caller in control passes; so does another principal's lockout.
    let keeps = json!({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]});
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": keeps.to_string()})).await.ok();
    // The same checks on CreateKey.
    h.call("CreateKey", json!({"Policy": locks_out.to_string()})).await.err("MalformedPolicyDocumentException");
    let created = h
        .call("CreateKey", json!({"Policy": locks_out.to_string(), "BypassPolicyLockoutSafetyCheck": true}))
        .await
        .ok();
    let k2 = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    h.call("Encrypt", json!({"KeyId": k2, "Plaintext": b64(b"x")})).await.ok();
    h.call("PutKeyPolicy", json!({"KeyId": k2, "Policy": keeps.to_string()})).await.err("AccessDeniedException");
    // Bypassed on PutKeyPolicy: accepted, and the caller has locked itself out.
    h.call(
        "PutKeyPolicy",
        json!({"KeyId": id, "Policy": locks_out.to_string(), "BypassPolicyLockoutSafetyCheck": true}),
    )
    .await
    .ok();
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": keeps.to_string()})).await.err("AccessDeniedException");
    // The flag must be a boolean.
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": keeps.to_string(), "BypassPolicyLockoutSafetyCheck": "yes"}))
        .await
        .err("SerializationException");
}
