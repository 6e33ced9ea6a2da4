//! Authorization attacks against a real key server: alias hijacking, identity policies,
//! account-level operations, the key quota, unsigned headers and look-alike account roots.
//! Each test is the attack first, then what the legitimate owner still can do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use aws_sigv4::http_request::SigningSettings;
use envelope_kms_server::policy::{ADMIN_IDENTITY_POLICY, parse_identity};
use envelope_kms_server::{Config, Credential};
use envelope_test_support::kms::*;
use serde_json::{Value, json};
use zeroize::Zeroizing;

const OUTSIDER_AKID: &str = "AKIAENVELOPEOUTSIDE1";
const OUTSIDER: &str = "arn:aws:iam::999999999999:user/outsider";

/// A key only the admin may use: its policy names the admin's ARN and nobody else.
async fn admin_only_key(h: &KeyServer) -> (String, String) {
    let policy =
        json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]});
    let m = h.call("CreateKey", json!({"Policy": policy.to_string()})).await.ok();
    let m = &m["KeyMetadata"];
    (m["KeyId"].as_str().unwrap().to_string(), m["Arn"].as_str().unwrap().to_string())
}

fn target_of(h: &Value, alias: &str) -> String {
    h["Aliases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["AliasName"] == alias)
        .map(|a| a["TargetKeyId"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_alias_cannot_be_moved_away_from_a_key_the_caller_may_not_use() {
    let h = start().await;
    let (victim_id, victim_arn) = admin_only_key(&h).await;
    h.call("CreateAlias", json!({"AliasName": "alias/victim", "TargetKeyId": victim_id})).await.ok();
    // The attacker (APP) owns a key of its own: the default policy (the account) lets it.
    let (own_id, _) = create_key_as(&h, APP_AKID).await;

    // The hijack: re-point alias/victim at the attacker's key.
    let m = h
        .call_as(APP_AKID, "UpdateAlias", json!({"AliasName": "alias/victim", "TargetKeyId": own_id}))
        .await
        .err("AccessDeniedException");
    assert_eq!(
        m,
        format!(
            "User: {APP} is not authorized to perform: kms:UpdateAlias on resource: {victim_arn} because no resource-based policy allows the kms:UpdateAlias action"
        )
    );
    let aliases = h.call("ListAliases", json!({})).await.ok();
    assert_eq!(target_of(&aliases, "alias/victim"), victim_id, "the alias did not move");

    // So the admin's writes by alias still go to the victim key, which the attacker cannot read.
    let e = h.call("Encrypt", json!({"KeyId": "alias/victim", "Plaintext": b64(b"dek seed")})).await.ok();
    assert_eq!(e["KeyId"], victim_arn);
    h.call_as(APP_AKID, "Decrypt", json!({"CiphertextBlob": e["CiphertextBlob"]})).await.err("AccessDeniedException");

    // Deleting the alias, or naming the victim key in a new alias, is refused the same way.
    h.call_as(APP_AKID, "DeleteAlias", json!({"AliasName": "alias/victim"})).await.err("AccessDeniedException");
    h.call_as(APP_AKID, "CreateAlias", json!({"AliasName": "alias/mine", "TargetKeyId": victim_id}))
        .await
        .err("AccessDeniedException");
    let aliases = h.call("ListAliases", json!({})).await.ok();
    assert_eq!(target_of(&aliases, "alias/victim"), victim_id);
    assert_eq!(target_of(&aliases, "alias/mine"), "");

    // The other direction: moving an alias of the attacker's onto the victim key is refused too
    // (UpdateAlias needs the permission on the new target as well).
    h.call_as(APP_AKID, "CreateAlias", json!({"AliasName": "alias/own", "TargetKeyId": own_id})).await.ok();
    h.call_as(APP_AKID, "UpdateAlias", json!({"AliasName": "alias/own", "TargetKeyId": victim_id}))
        .await
        .err("AccessDeniedException");

    // The attacker manages its own aliases on its own keys; the admin moves the victim alias.
    let (own2, _) = create_key_as(&h, APP_AKID).await;
    h.call_as(APP_AKID, "UpdateAlias", json!({"AliasName": "alias/own", "TargetKeyId": own2})).await.ok();
    h.call_as(APP_AKID, "DeleteAlias", json!({"AliasName": "alias/own"})).await.ok();
    let (victim2, _) = admin_only_key(&h).await;
    h.call("UpdateAlias", json!({"AliasName": "alias/victim", "TargetKeyId": victim2})).await.ok();
    let aliases = h.call("ListAliases", json!({})).await.ok();
    assert_eq!(target_of(&aliases, "alias/victim"), victim2);
}

async fn create_key_as(h: &KeyServer, akid: &'static str) -> (String, String) {
    let m = h.call_as(akid, "CreateKey", json!({})).await.ok();
    let m = &m["KeyMetadata"];
    (m["KeyId"].as_str().unwrap().to_string(), m["Arn"].as_str().unwrap().to_string())
}

fn policy_credentials(app_policy: &str) -> Vec<Credential> {
    vec![
        Credential::new(AKID, Zeroizing::new(SECRET.into()), None, ADMIN)
            .with_policy(parse_identity(ADMIN_IDENTITY_POLICY).unwrap()),
        Credential::new(APP_AKID, Zeroizing::new(SECRET.into()), None, APP)
            .with_policy(parse_identity(app_policy).unwrap()),
        Credential::new(OUTSIDER_AKID, Zeroizing::new(SECRET.into()), None, OUTSIDER),
    ]
}

#[tokio::test]
async fn identity_policies_decide_inside_key_policies_that_trust_the_account() {
    let app_policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], "Resource": format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/*")},
        {"Effect": "Deny", "Action": "kms:ScheduleKeyDeletion", "Resource": "*"}]});
    let h = start_custom(Config::new(REGION, ACCOUNT), policy_credentials(&app_policy.to_string()), None).await;
    let (id, arn) = create_key(&h).await;

    // Account-level operations need the identity policy.
    for (op, body) in [
        ("CreateKey", json!({})),
        ("ListKeys", json!({})),
        ("ListAliases", json!({})),
        ("GenerateRandom", json!({"NumberOfBytes": 16})),
    ] {
        let m = h.call_as(APP_AKID, op, body).await.err("AccessDeniedException");
        assert_eq!(
            m,
            format!(
                "User: {APP} is not authorized to perform: kms:{op} on resource: * because no identity-based policy allows the kms:{op} action"
            )
        );
    }
    // Inside the default key policy (the account root), the identity policy decides.
    let ct = h.call_as(APP_AKID, "Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.ok()["CiphertextBlob"]
        .clone();
    h.call_as(APP_AKID, "Decrypt", json!({"CiphertextBlob": ct})).await.ok();
    h.call_as(APP_AKID, "DescribeKey", json!({"KeyId": arn})).await.ok();
    let m = h.call_as(APP_AKID, "DisableKey", json!({"KeyId": id})).await.err("AccessDeniedException");
    assert!(m.ends_with("because no identity-based policy allows the kms:DisableKey action"), "{m}");
    h.call_as(APP_AKID, "CreateAlias", json!({"AliasName": "alias/app", "TargetKeyId": id}))
        .await
        .err("AccessDeniedException");

    // A key policy naming the app directly allows on its own; the identity Deny still wins.
    let policy = json!({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": ["kms:DisableKey", "kms:EnableKey", "kms:ScheduleKeyDeletion"], "Resource": "*"}]});
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": policy.to_string()})).await.ok();
    h.call_as(APP_AKID, "DisableKey", json!({"KeyId": id})).await.ok();
    h.call_as(APP_AKID, "EnableKey", json!({"KeyId": id})).await.ok();
    let m = h.call_as(APP_AKID, "ScheduleKeyDeletion", json!({"KeyId": id})).await.err("AccessDeniedException");
    assert!(m.ends_with("with an explicit deny in an identity-based policy"), "{m}");

    // The administrator's generated-style policy allows everything.
    h.call("ListKeys", json!({})).await.ok();
    h.call("GenerateRandom", json!({"NumberOfBytes": 8})).await.ok();
}

#[tokio::test]
async fn principals_of_other_accounts_cannot_create_or_list_keys() {
    let h = start_custom(Config::new(REGION, ACCOUNT), policy_credentials(ADMIN_IDENTITY_POLICY), None).await;
    let (id, arn) = create_key(&h).await;
    for (op, body) in
        [("CreateKey", json!({"Description": "x".repeat(8192)})), ("ListKeys", json!({})), ("ListAliases", json!({}))]
    {
        h.call_as(OUTSIDER_AKID, op, body).await.err("AccessDeniedException");
    }
    assert_eq!(h.call("ListKeys", json!({})).await.ok()["Keys"].as_array().unwrap().len(), 1, "no key was created");
    // The default key policy trusts this account only.
    let m = h.call_as(OUTSIDER_AKID, "DescribeKey", json!({"KeyId": arn})).await.err("AccessDeniedException");
    assert!(m.contains("no resource-based policy"), "{m}");
    // A key policy that trusts the other account lets that account's principals in.
    let policy = json!({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::999999999999:root"}, "Action": "kms:DescribeKey", "Resource": "*"}]});
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": policy.to_string()})).await.ok();
    h.call_as(OUTSIDER_AKID, "DescribeKey", json!({"KeyId": arn})).await.ok();
}

#[tokio::test]
async fn the_key_count_is_limited_per_account() {
    let mut config = Config::new(REGION, ACCOUNT);
    config.max_keys = 3;
    let h = start_with(config).await;
    for _ in 0..3 {
        create_key(&h).await;
    }
    let m = h.call("CreateKey", json!({})).await.err("LimitExceededException");
    assert!(m.contains("limit of 3 KMS keys"), "{m}");
    // Keys pending deletion still count, as on AWS.
    let keys = h.call("ListKeys", json!({})).await.ok();
    let first = keys["Keys"][0]["KeyId"].as_str().unwrap().to_string();
    h.call("ScheduleKeyDeletion", json!({"KeyId": first, "PendingWindowInDays": 7})).await.ok();
    h.call("CreateKey", json!({})).await.err("LimitExceededException");
    assert_eq!(h.call("ListKeys", json!({})).await.ok()["Keys"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_target_and_every_amz_header_must_be_signed() {
    let h = start().await;
    let (id, _) = create_key(&h).await;
    let body = json!({"KeyId": id}).to_string().into_bytes();
    let excluding = |names: &[&'static str]| {
        let mut s = SigningSettings::default();
        let mut ex = s.excluded_headers.take().unwrap_or_default();
        ex.extend(names.iter().map(|n| std::borrow::Cow::Borrowed(*n)));
        s.excluded_headers = Some(ex);
        s
    };
    // Signed over host and x-amz-date only (the attack's capture)...
    let headers = h.sign_headers(
        h.base_headers("TrentService.DescribeKey"),
        &body,
        &Signer::default(),
        excluding(&["x-amz-target", "content-type"]),
    );
    let signed = headers.iter().find(|(k, _)| k == "authorization").unwrap().1.clone();
    assert!(signed.contains("SignedHeaders=host;x-amz-date,"), "{signed}");
    let m = h.send("POST", "/", &headers, &body).await.err("IncompleteSignatureException");
    assert!(m.contains("must be a 'SignedHeader'"), "{m}");
    // ...replayed with the target swapped to DisableKey: refused, and the key stays enabled.
    let replay: Vec<_> = headers
        .iter()
        .map(|(k, v)| {
            if k == "x-amz-target" {
                (k.clone(), "TrentService.DisableKey".to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    h.send("POST", "/", &replay, &body).await.err("IncompleteSignatureException");
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["KeyState"], "Enabled");

    for (excluded, name) in [("x-amz-target", "x-amz-target"), ("content-type", "content-type")] {
        let headers = h.sign_headers(
            h.base_headers("TrentService.DescribeKey"),
            &body,
            &Signer::default(),
            excluding(&[excluded]),
        );
        let m = h.send("POST", "/", &headers, &body).await.err("IncompleteSignatureException");
        assert_eq!(m, format!("'{name}' must be a 'SignedHeader' in the AWS Authorization."));
    }
    // Any other x-amz-* header present must be signed too.
    let mut with_extra = h.base_headers("TrentService.DescribeKey");
    with_extra.push(("x-amz-meta-note".to_string(), "hello".to_string()));
    let headers = h.sign_headers(with_extra.clone(), &body, &Signer::default(), excluding(&["x-amz-meta-note"]));
    let m = h.send("POST", "/", &headers, &body).await.err("IncompleteSignatureException");
    assert_eq!(m, "'x-amz-meta-note' must be a 'SignedHeader' in the AWS Authorization.");
    // Signed, it is accepted.
    let headers = h.sign_headers(with_extra, &body, &Signer::default(), SigningSettings::default());
    h.send("POST", "/", &headers, &body).await.ok();
}

#[tokio::test]
async fn only_the_exact_root_arn_stands_for_the_account() {
    let h = start().await;
    let (id, _) = create_key(&h).await;
    let policy = json!({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam::111122223333:user/nobody:root", "arn:aws:sts::111122223333:root"]}, "Action": "kms:*", "Resource": "*"}]});
    h.call("PutKeyPolicy", json!({"KeyId": id, "Policy": policy.to_string()})).await.ok();
    h.call_as(APP_AKID, "DescribeKey", json!({"KeyId": id})).await.err("AccessDeniedException");
    h.call_as(APP_AKID, "Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.err("AccessDeniedException");
    h.call("DescribeKey", json!({"KeyId": id})).await.ok();
}
