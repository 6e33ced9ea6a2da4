//! End-to-end tests: a real server on 127.0.0.1:0, requests signed with `aws-sigv4` (the SDKs'
//! signer) and sent over plain TCP as HTTP/1.1.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use envelope_keystore::KeyStore;
use envelope_kms_server::{Config, Credential, CredentialStore, Server, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

#[tokio::test]
async fn create_describe_encrypt_decrypt_with_every_key_form() {
    let h = start().await;
    let r = h.call("CreateKey", json!({})).await.ok();
    let m = &r["KeyMetadata"];
    let id = m["KeyId"].as_str().unwrap().to_string();
    let arn = format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{id}");
    assert_eq!(m["Arn"], arn);
    assert_eq!(m["AWSAccountId"], ACCOUNT);
    assert_eq!(m["KeyState"], "Enabled");
    assert_eq!(m["Enabled"], true);
    assert_eq!(m["KeySpec"], "SYMMETRIC_DEFAULT");
    assert_eq!(m["KeyUsage"], "ENCRYPT_DECRYPT");
    assert_eq!(m["Origin"], "AWS_KMS");
    assert_eq!(m["KeyManager"], "CUSTOMER");
    assert_eq!(m["EncryptionAlgorithms"], json!(["SYMMETRIC_DEFAULT"]));
    assert_eq!(m["CurrentKeyMaterialId"].as_str().unwrap().len(), 64);
    assert!(m["CreationDate"].is_number());

    h.call("CreateAlias", json!({"AliasName": "alias/k8s-master-key", "TargetKeyId": id})).await.ok();
    let alias_arn = format!("arn:aws:kms:{REGION}:{ACCOUNT}:alias/k8s-master-key");
    for form in [id.as_str(), arn.as_str(), "alias/k8s-master-key", alias_arn.as_str()] {
        let d = h.call("DescribeKey", json!({"KeyId": form})).await.ok();
        assert_eq!(d["KeyMetadata"]["KeyId"], id, "{form}");
        let ctx = json!({"cluster": "prod", "ns": "kube-system"});
        let e = h
            .call("Encrypt", json!({"KeyId": form, "Plaintext": b64(b"top secret"), "EncryptionContext": ctx}))
            .await
            .ok();
        assert_eq!(e["KeyId"], arn);
        assert_eq!(e["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
        let blob = e["CiphertextBlob"].as_str().unwrap().to_string();
        // KeyId is optional on Decrypt; when given in any form it must be the encrypting key.
        for key in [None, Some(form)] {
            let mut req = json!({"CiphertextBlob": blob, "EncryptionContext": ctx});
            if let Some(k) = key {
                req["KeyId"] = json!(k);
            }
            let d = h.call("Decrypt", req).await.ok();
            assert_eq!(unb64(&d["Plaintext"]), b"top secret");
            assert_eq!(d["KeyId"], arn);
            assert_eq!(d["KeyMaterialId"], m["CurrentKeyMaterialId"]);
        }
        // Wrong or missing context: InvalidCiphertextException.
        h.call(
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": {"cluster": "dev", "ns": "kube-system"}}),
        )
        .await
        .err("InvalidCiphertextException");
        h.call("Decrypt", json!({"CiphertextBlob": blob})).await.err("InvalidCiphertextException");
    }

    // Decrypt naming another key: IncorrectKeyException.
    let (_, other_arn) = create_key(&h).await;
    let e = h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.ok();
    h.call("Decrypt", json!({"CiphertextBlob": e["CiphertextBlob"], "KeyId": other_arn}))
        .await
        .err("IncorrectKeyException");
    // Tampered and garbage ciphertexts.
    let mut blob = unb64(&e["CiphertextBlob"]);
    let last = blob.len() - 1;
    blob[last] ^= 1;
    h.call("Decrypt", json!({"CiphertextBlob": b64(&blob)})).await.err("InvalidCiphertextException");
    h.call("Decrypt", json!({"CiphertextBlob": b64(b"garbage")})).await.err("InvalidCiphertextException");
    let mut foreign = unb64(&e["CiphertextBlob"]);
    foreign[1..17].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    h.call("Decrypt", json!({"CiphertextBlob": b64(&foreign)})).await.err("InvalidCiphertextException");
}

#[tokio::test]
async fn unknown_keys_and_bad_identifiers() {
    let h = start().await;
    let missing = uuid::Uuid::new_v4().to_string();
    let msg = h.call("DescribeKey", json!({"KeyId": missing})).await.err("NotFoundException");
    assert_eq!(msg, format!("Key 'arn:aws:kms:{REGION}:{ACCOUNT}:key/{missing}' does not exist"));
    let msg = h.call("Encrypt", json!({"KeyId": "alias/nope", "Plaintext": b64(b"x")})).await.err("NotFoundException");
    assert_eq!(msg, format!("Alias arn:aws:kms:{REGION}:{ACCOUNT}:alias/nope is not found."));
    h.call("DescribeKey", json!({"KeyId": "not-a-key"})).await.err("NotFoundException");
    h.call("DescribeKey", json!({"KeyId": "arn:aws:s3:::bucket"})).await.err("InvalidArnException");
    let (id, _) = create_key(&h).await;
    h.call("DescribeKey", json!({"KeyId": format!("arn:aws:kms:eu-west-1:{ACCOUNT}:key/{id}")}))
        .await
        .err("NotFoundException");
    // Management operations take a key id or key ARN only.
    h.call("CreateAlias", json!({"AliasName": "alias/a", "TargetKeyId": id})).await.ok();
    h.call("DisableKey", json!({"KeyId": "alias/a"})).await.err("NotFoundException");
}

#[tokio::test]
async fn list_keys_paginates() {
    let h = start().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create_key(&h).await.0);
    }
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = json!({"Limit": 2});
        if let Some(m) = &marker {
            req["Marker"] = json!(m);
        }
        let r = h.call("ListKeys", req).await.ok();
        pages += 1;
        for k in r["Keys"].as_array().unwrap() {
            assert_eq!(k["KeyArn"], format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{}", k["KeyId"].as_str().unwrap()));
            seen.push(k["KeyId"].as_str().unwrap().to_string());
        }
        if r["Truncated"] == true {
            marker = Some(r["NextMarker"].as_str().unwrap().to_string());
        } else {
            assert!(r.get("NextMarker").is_none());
            break;
        }
    }
    assert_eq!(pages, 3);
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
    let all = h.call("ListKeys", json!({})).await.ok();
    assert_eq!(all["Keys"].as_array().unwrap().len(), 5);
    assert_eq!(all["Truncated"], false);
    h.call("ListKeys", json!({"Marker": "bm90IG91cnM="})).await.err("InvalidMarkerException");
    h.call("ListKeys", json!({"Limit": 0})).await.err("ValidationException");
}

#[tokio::test]
async fn alias_lifecycle() {
    let h = start().await;
    let (a, _) = create_key(&h).await;
    let (b, _) = create_key(&h).await;
    for name in ["alias/one", "alias/two", "alias/three"] {
        h.call("CreateAlias", json!({"AliasName": name, "TargetKeyId": a})).await.ok();
    }
    let msg =
        h.call("CreateAlias", json!({"AliasName": "alias/one", "TargetKeyId": b})).await.err("AlreadyExistsException");
    assert!(msg.contains("alias/one"), "{msg}");
    h.call("CreateAlias", json!({"AliasName": "alias/aws/s3", "TargetKeyId": b})).await.err("NotAuthorizedException");
    h.call("CreateAlias", json!({"AliasName": "one", "TargetKeyId": b})).await.err("ValidationException");
    h.call("CreateAlias", json!({"AliasName": "alias/x", "TargetKeyId": uuid::Uuid::new_v4().to_string()}))
        .await
        .err("NotFoundException");

    h.call("UpdateAlias", json!({"AliasName": "alias/two", "TargetKeyId": b})).await.ok();
    let d = h.call("DescribeKey", json!({"KeyId": "alias/two"})).await.ok();
    assert_eq!(d["KeyMetadata"]["KeyId"], b);
    h.call("UpdateAlias", json!({"AliasName": "alias/nope", "TargetKeyId": b})).await.err("NotFoundException");

    let all = h.call("ListAliases", json!({})).await.ok();
    let names: Vec<&str> =
        all["Aliases"].as_array().unwrap().iter().map(|a| a["AliasName"].as_str().unwrap()).collect();
    assert_eq!(names, ["alias/one", "alias/three", "alias/two"]);
    let two = &all["Aliases"][2];
    assert_eq!(two["TargetKeyId"], b);
    assert_eq!(two["AliasArn"], format!("arn:aws:kms:{REGION}:{ACCOUNT}:alias/two"));
    assert!(two["LastUpdatedDate"].as_i64() >= two["CreationDate"].as_i64());

    let only_a = h.call("ListAliases", json!({"KeyId": a})).await.ok();
    assert_eq!(only_a["Aliases"].as_array().unwrap().len(), 2);
    let p1 = h.call("ListAliases", json!({"Limit": 2})).await.ok();
    assert_eq!(p1["Truncated"], true);
    let p2 = h.call("ListAliases", json!({"Limit": 2, "Marker": p1["NextMarker"]})).await.ok();
    assert_eq!(p2["Aliases"][0]["AliasName"], "alias/two");
    assert_eq!(p2["Truncated"], false);

    h.call("DeleteAlias", json!({"AliasName": "alias/one"})).await.ok();
    h.call("DeleteAlias", json!({"AliasName": "alias/one"})).await.err("NotFoundException");
    h.call("Encrypt", json!({"KeyId": "alias/one", "Plaintext": b64(b"x")})).await.err("NotFoundException");
}

#[tokio::test]
async fn data_keys_random_and_reencrypt() {
    let h = start().await;
    let (a, a_arn) = create_key(&h).await;
    let (_, b_arn) = create_key(&h).await;
    let ctx = json!({"purpose": "dek"});
    let g = h.call("GenerateDataKey", json!({"KeyId": a, "KeySpec": "AES_256", "EncryptionContext": ctx})).await.ok();
    let dek = unb64(&g["Plaintext"]);
    assert_eq!(dek.len(), 32);
    assert_eq!(g["KeyId"], a_arn);
    assert_eq!(g["KeyMaterialId"].as_str().unwrap().len(), 64);
    let d = h.call("Decrypt", json!({"CiphertextBlob": g["CiphertextBlob"], "EncryptionContext": ctx})).await.ok();
    assert_eq!(unb64(&d["Plaintext"]), dek);

    let g = h.call("GenerateDataKey", json!({"KeyId": a, "NumberOfBytes": 64})).await.ok();
    assert_eq!(unb64(&g["Plaintext"]).len(), 64);
    let w = h.call("GenerateDataKeyWithoutPlaintext", json!({"KeyId": a, "KeySpec": "AES_128"})).await.ok();
    assert!(w.get("Plaintext").is_none());
    let d = h.call("Decrypt", json!({"CiphertextBlob": w["CiphertextBlob"]})).await.ok();
    assert_eq!(unb64(&d["Plaintext"]).len(), 16);
    h.call("GenerateDataKey", json!({"KeyId": a})).await.err("ValidationException");
    h.call("GenerateDataKey", json!({"KeyId": a, "KeySpec": "AES_256", "NumberOfBytes": 32}))
        .await
        .err("ValidationException");

    let r = h.call("GenerateRandom", json!({"NumberOfBytes": 100})).await.ok();
    assert_eq!(unb64(&r["Plaintext"]).len(), 100);
    h.call("GenerateRandom", json!({"NumberOfBytes": 1025})).await.err("ValidationException");

    // ReEncrypt from key a (context ctx) to key b with a new context.
    let e = h.call("Encrypt", json!({"KeyId": a, "Plaintext": b64(b"move me"), "EncryptionContext": ctx})).await.ok();
    let new_ctx = json!({"purpose": "moved"});
    let re = h
        .call(
            "ReEncrypt",
            json!({"CiphertextBlob": e["CiphertextBlob"], "SourceEncryptionContext": ctx,
                   "DestinationKeyId": b_arn, "DestinationEncryptionContext": new_ctx}),
        )
        .await
        .ok();
    assert_eq!(re["SourceKeyId"], a_arn);
    assert_eq!(re["KeyId"], b_arn);
    assert_eq!(re["SourceEncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    assert_eq!(re["DestinationKeyMaterialId"].as_str().unwrap().len(), 64);
    let d = h.call("Decrypt", json!({"CiphertextBlob": re["CiphertextBlob"], "EncryptionContext": new_ctx})).await.ok();
    assert_eq!(unb64(&d["Plaintext"]), b"move me");
    assert_eq!(d["KeyId"], b_arn);
    assert!(d.get("Plaintext").is_some());
    h.call("ReEncrypt", json!({"CiphertextBlob": e["CiphertextBlob"], "DestinationKeyId": b_arn}))
        .await
        .err("InvalidCiphertextException");
    h.call("ReEncrypt", json!({"CiphertextBlob": e["CiphertextBlob"], "SourceKeyId": b_arn, "SourceEncryptionContext": ctx, "DestinationKeyId": a}))
        .await
        .err("IncorrectKeyException");

    // DryRun answers DryRunOperationException and does nothing.
    h.call("Encrypt", json!({"KeyId": a, "Plaintext": b64(b"x"), "DryRun": true}))
        .await
        .err("DryRunOperationException");
}

#[tokio::test]
async fn rotation_keeps_old_ciphertexts_and_disable_blocks_use() {
    let h = start().await;
    let (id, arn) = create_key(&h).await;
    let before = h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["CurrentKeyMaterialId"].clone();
    let old = h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"old")})).await.ok();
    let r = h.call("RotateKeyOnDemand", json!({"KeyId": arn})).await.ok();
    assert_eq!(r["KeyId"], id);
    let after = h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["CurrentKeyMaterialId"].clone();
    assert_ne!(before, after);
    let d = h.call("Decrypt", json!({"CiphertextBlob": old["CiphertextBlob"]})).await.ok();
    assert_eq!(unb64(&d["Plaintext"]), b"old");
    assert_eq!(d["KeyMaterialId"], before);
    let new = h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"new")})).await.ok();
    let d = h.call("Decrypt", json!({"CiphertextBlob": new["CiphertextBlob"]})).await.ok();
    assert_eq!(d["KeyMaterialId"], after);

    h.call("DisableKey", json!({"KeyId": id})).await.ok();
    let m = h.call("DescribeKey", json!({"KeyId": id})).await.ok();
    assert_eq!(m["KeyMetadata"]["KeyState"], "Disabled");
    assert_eq!(m["KeyMetadata"]["Enabled"], false);
    h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.err("DisabledException");
    h.call("Decrypt", json!({"CiphertextBlob": old["CiphertextBlob"]})).await.err("DisabledException");
    h.call("GenerateDataKey", json!({"KeyId": id, "KeySpec": "AES_256"})).await.err("DisabledException");
    h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.err("DisabledException");
    h.call("EnableKey", json!({"KeyId": arn})).await.ok();
    h.call("Decrypt", json!({"CiphertextBlob": old["CiphertextBlob"]})).await.ok();
}

#[tokio::test]
async fn authentication_failures() {
    let h = start().await;
    let body = br#"{"NumberOfBytes": 8}"#.to_vec();
    let ok = Signer::default();
    assert_eq!(h.call_with("GenerateRandom", body.clone(), &ok).await.status, 200);

    let wrong_secret = Signer { secret: "not-the-secret-at-all-0000000000000000000", ..ok.clone() };
    let msg = h.call_with("GenerateRandom", body.clone(), &wrong_secret).await.err("InvalidSignatureException");
    assert!(msg.starts_with("The request signature we calculated does not match"), "{msg}");

    let unknown = Signer { akid: "AKIAUNKNOWNUNKNOWN00", ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &unknown).await.err("UnrecognizedClientException");

    let stale = Signer { time: SystemTime::now() - Duration::from_secs(10 * 60), ..ok.clone() };
    let msg = h.call_with("GenerateRandom", body.clone(), &stale).await.err("InvalidSignatureException");
    assert!(msg.starts_with("Signature expired"), "{msg}");
    let future = Signer { time: SystemTime::now() + Duration::from_secs(10 * 60), ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &future).await.err("InvalidSignatureException");
    let skewed_ok = Signer { time: SystemTime::now() - Duration::from_secs(4 * 60), ..ok.clone() };
    assert_eq!(h.call_with("GenerateRandom", body.clone(), &skewed_ok).await.status, 200);

    let region = Signer { region: "eu-west-1", ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &region).await.err("InvalidSignatureException");

    // Body changed after signing.
    let headers = h.signed_headers("TrentService.GenerateRandom", &body, br#"{"NumberOfBytes": 9}"#, &ok);
    h.send("POST", "/", &headers, &body).await.err("InvalidSignatureException");
    // Target changed after signing.
    let mut headers = h.signed_headers("TrentService.GenerateRandom", &body, &body, &ok);
    for (k, v) in headers.iter_mut() {
        if k == "x-amz-target" {
            *v = "TrentService.ListKeys".into();
        }
    }
    h.send("POST", "/", &headers, &body).await.err("InvalidSignatureException");

    // No Authorization header at all; a malformed one.
    let plain = vec![("x-amz-target".to_string(), "TrentService.ListKeys".to_string())];
    h.send("POST", "/", &plain, b"{}").await.err("MissingAuthenticationTokenException");
    let bad = vec![("authorization".to_string(), "AWS4-HMAC-SHA256 Credential=x".to_string())];
    h.send("POST", "/", &bad, b"{}").await.err("IncompleteSignatureException");

    // Session tokens: required for the key that has one, refused for the key that has none.
    let with_token = Signer { akid: TOKEN_AKID, token: Some(TOKEN), ..ok.clone() };
    assert_eq!(h.call_with("GenerateRandom", body.clone(), &with_token).await.status, 200);
    let missing_token = Signer { akid: TOKEN_AKID, token: None, ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &missing_token).await.err("UnrecognizedClientException");
    let wrong_token = Signer { akid: TOKEN_AKID, token: Some("other"), ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &wrong_token).await.err("UnrecognizedClientException");
    let extra_token = Signer { token: Some(TOKEN), ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &extra_token).await.err("UnrecognizedClientException");
}

#[tokio::test]
async fn protocol_errors_are_aws_shaped() {
    let h = start().await;
    let s = Signer::default();
    h.call_with("Encrypt", b"{not json".to_vec(), &s).await.err("SerializationException");
    h.call_with("Encrypt", br#"{"KeyId": 12, "Plaintext": "eA=="}"#.to_vec(), &s).await.err("SerializationException");
    let msg = h.call("Encrypt", json!({"Plaintext": "eA=="})).await.err("ValidationException");
    assert_eq!(
        msg,
        "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null"
    );
    h.call("Encrypt", json!({"KeyId": "alias/x", "Plaintext": b64(&[0u8; 4097])})).await.err("ValidationException");
    h.call("NoSuchOperation", json!({})).await.err("UnknownOperationException");
    h.call("Sign", json!({"KeyId": "x"})).await.err("UnsupportedOperationException");
    h.call("CreateKey", json!({"KeySpec": "RSA_2048"})).await.err("UnsupportedOperationException");

    // Oversized body: an AWS-shaped 400, not a bare 413 or a reset.
    let big = vec![b' '; envelope_kms_server::DEFAULT_MAX_BODY + 1000];
    let msg = h.call_with("ListKeys", big, &s).await.err("ValidationException");
    assert!(msg.contains("larger than the limit"), "{msg}");

    // Wrong method / path / missing target.
    let r = h.send("GET", "/", &[], b"").await;
    assert_eq!(r.error_type(), "UnknownOperationException");
    let r = h.send("POST", "/other", &[], b"{}").await;
    assert_eq!(r.error_type(), "UnknownOperationException");
    let headers: Vec<_> = h
        .signed_headers("TrentService.ListKeys", b"{}", b"{}", &s)
        .into_iter()
        .filter(|(k, _)| k != "x-amz-target")
        .collect();
    // Dropping a signed header breaks the signature before the target is looked at.
    h.send("POST", "/", &headers, b"{}").await.err("InvalidSignatureException");

    // Empty-output operations answer 200 with an empty body.
    let (id, _) = create_key(&h).await;
    let r = h.call("DisableKey", json!({"KeyId": id})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json, Value::Null);
}

#[tokio::test]
async fn deletion_schedule_cancel_and_purge() {
    let h = start().await;
    let (id, arn) = create_key(&h).await;
    h.call("CreateAlias", json!({"AliasName": "alias/doomed", "TargetKeyId": id})).await.ok();
    let ct = h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.ok()["CiphertextBlob"].clone();
    let m =
        h.call("ScheduleKeyDeletion", json!({"KeyId": id, "PendingWindowInDays": 6})).await.err("ValidationException");
    assert!(m.contains("pendingWindowInDays"), "{m}");
    h.call("ScheduleKeyDeletion", json!({"KeyId": id, "PendingWindowInDays": 31})).await.err("ValidationException");
    let r = h.call("ScheduleKeyDeletion", json!({"KeyId": id, "PendingWindowInDays": 7})).await.ok();
    assert_eq!(
        (r["KeyId"].as_str(), r["KeyState"].as_str(), r["PendingWindowInDays"].as_i64()),
        (Some(arn.as_str()), Some("PendingDeletion"), Some(7))
    );
    let date = r["DeletionDate"].as_i64().unwrap();
    let meta = h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"].clone();
    assert_eq!(
        (meta["KeyState"].as_str(), meta["DeletionDate"].as_i64(), meta["Enabled"].as_bool()),
        (Some("PendingDeletion"), Some(date), Some(false))
    );
    // Pending deletion: crypto and most management calls are KMSInvalidStateException.
    h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.err("KMSInvalidStateException");
    h.call("Decrypt", json!({"CiphertextBlob": ct})).await.err("KMSInvalidStateException");
    h.call("EnableKey", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    h.call("DisableKey", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    h.call("ScheduleKeyDeletion", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    h.call("UpdateKeyDescription", json!({"KeyId": id, "Description": "x"})).await.err("KMSInvalidStateException");
    h.call("TagResource", json!({"KeyId": id, "Tags": [{"TagKey": "a", "TagValue": "b"}]}))
        .await
        .err("KMSInvalidStateException");
    h.call("EnableKeyRotation", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    h.call("GetKeyPolicy", json!({"KeyId": id})).await.ok();
    // Cancel → Disabled (crypto: DisabledException); cancel again → invalid state.
    assert_eq!(h.call("CancelKeyDeletion", json!({"KeyId": id})).await.ok()["KeyId"].as_str(), Some(arn.as_str()));
    h.call("CancelKeyDeletion", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["KeyState"], "Disabled");
    h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.err("DisabledException");
    // Schedule again (default window 30 days), move the clock, purge.
    let r = h.call("ScheduleKeyDeletion", json!({"KeyId": id})).await.ok();
    assert_eq!(r["PendingWindowInDays"].as_i64(), Some(30));
    assert!(h.server.run_maintenance().unwrap().deleted.is_empty());
    h.server.clock().advance(30 * 86_400 + 1);
    assert_eq!(h.server.run_maintenance().unwrap().deleted, vec![id.clone()]);
    h.call("DescribeKey", json!({"KeyId": id})).await.err("NotFoundException");
    h.call("DescribeKey", json!({"KeyId": "alias/doomed"})).await.err("NotFoundException");
    h.call("Decrypt", json!({"CiphertextBlob": ct})).await.err("InvalidCiphertextException");
    let keys = h.call("ListKeys", json!({})).await.ok();
    assert!(!keys["Keys"].as_array().unwrap().iter().any(|k| k["KeyId"] == id.as_str()));
}

#[tokio::test]
async fn description_and_rotation_apis() {
    let h = start().await;
    let (id, arn) = create_key(&h).await;
    h.call("UpdateKeyDescription", json!({"KeyId": id, "Description": "new"})).await.ok();
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["Description"], "new");
    let st = h.call("GetKeyRotationStatus", json!({"KeyId": id})).await.ok();
    assert_eq!(st["KeyRotationEnabled"], false);
    assert_eq!(st["KeyId"].as_str(), Some(arn.as_str()));
    h.call("EnableKeyRotation", json!({"KeyId": id, "RotationPeriodInDays": 89})).await.err("ValidationException");
    h.call("EnableKeyRotation", json!({"KeyId": id, "RotationPeriodInDays": 90})).await.ok();
    let st = h.call("GetKeyRotationStatus", json!({"KeyId": id})).await.ok();
    assert_eq!((st["KeyRotationEnabled"].as_bool(), st["RotationPeriodInDays"].as_i64()), (Some(true), Some(90)));
    let next = st["NextRotationDate"].as_i64().unwrap();
    assert!(h.call("ListKeyRotations", json!({"KeyId": id})).await.ok()["Rotations"].as_array().unwrap().is_empty());
    h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.ok();
    h.server.clock().advance(91 * 86_400);
    assert_eq!(h.server.run_maintenance().unwrap().rotated, vec![id.clone()]);
    let st = h.call("GetKeyRotationStatus", json!({"KeyId": id})).await.ok();
    assert!(st["NextRotationDate"].as_i64().unwrap() > next);
    let r = h.call("ListKeyRotations", json!({"KeyId": id})).await.ok();
    let types: Vec<_> =
        r["Rotations"].as_array().unwrap().iter().map(|e| e["RotationType"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, ["ON_DEMAND", "AUTOMATIC"]);
    let cur = h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["CurrentKeyMaterialId"].clone();
    assert_eq!(r["Rotations"][1]["KeyMaterialId"], cur);
    assert_eq!(r["Rotations"][1]["KeyMaterialState"], "CURRENT");
    // ALL_KEY_MATERIAL adds the first material; pagination with Limit 1.
    let all = h.call("ListKeyRotations", json!({"KeyId": id, "IncludeKeyMaterial": "ALL_KEY_MATERIAL"})).await.ok();
    assert_eq!(all["Rotations"].as_array().unwrap().len(), 3);
    let mut marker: Option<String> = None;
    let mut seen = 0;
    loop {
        let mut body = json!({"KeyId": id, "Limit": 1});
        if let Some(m) = &marker {
            body["Marker"] = json!(m);
        }
        let p = h.call("ListKeyRotations", body).await.ok();
        seen += p["Rotations"].as_array().unwrap().len();
        if p["Truncated"] != true {
            break;
        }
        marker = p["NextMarker"].as_str().map(str::to_string);
    }
    assert_eq!(seen, 2);
    h.call("ListKeyRotations", json!({"KeyId": id, "Marker": "bogus"})).await.err("InvalidMarkerException");
    h.call("DisableKeyRotation", json!({"KeyId": id})).await.ok();
    assert_eq!(h.call("GetKeyRotationStatus", json!({"KeyId": id})).await.ok()["KeyRotationEnabled"], false);
    h.call("DisableKey", json!({"KeyId": id})).await.ok();
    h.call("EnableKeyRotation", json!({"KeyId": id})).await.err("DisabledException");
}

#[tokio::test]
async fn tags() {
    let h = start().await;
    let r = h.call("CreateKey", json!({"Tags": [{"TagKey": "env", "TagValue": "prod"}]})).await.ok();
    let id = r["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    h.call(
        "TagResource",
        json!({"KeyId": id, "Tags": [{"TagKey": "team", "TagValue": "k8s"}, {"TagKey": "env", "TagValue": "dev"}]}),
    )
    .await
    .ok();
    let t = h.call("ListResourceTags", json!({"KeyId": id})).await.ok();
    assert_eq!(t["Tags"], json!([{"TagKey": "env", "TagValue": "dev"}, {"TagKey": "team", "TagValue": "k8s"}]));
    assert_eq!(t["Truncated"], false);
    let p1 = h.call("ListResourceTags", json!({"KeyId": id, "Limit": 1})).await.ok();
    assert_eq!((p1["Tags"][0]["TagKey"].as_str(), p1["Truncated"].as_bool()), (Some("env"), Some(true)));
    let p2 = h.call("ListResourceTags", json!({"KeyId": id, "Limit": 1, "Marker": p1["NextMarker"]})).await.ok();
    assert_eq!((p2["Tags"][0]["TagKey"].as_str(), p2["Truncated"].as_bool()), (Some("team"), Some(false)));
    h.call("UntagResource", json!({"KeyId": id, "TagKeys": ["env"]})).await.ok();
    assert_eq!(
        h.call("ListResourceTags", json!({"KeyId": id})).await.ok()["Tags"],
        json!([{"TagKey": "team", "TagValue": "k8s"}])
    );
    h.call("TagResource", json!({"KeyId": id, "Tags": [{"TagKey": "aws:x", "TagValue": "1"}]}))
        .await
        .err("TagException");
    h.call("TagResource", json!({"KeyId": id, "Tags": [{"TagKey": "", "TagValue": "1"}]}))
        .await
        .err("ValidationException");
    let many: Vec<_> = (0..50).map(|i| json!({"TagKey": format!("k{i}"), "TagValue": ""})).collect();
    h.call("TagResource", json!({"KeyId": id, "Tags": many})).await.err("LimitExceededException");
    h.call("CreateKey", json!({"Tags": [{"TagKey": "aws:x", "TagValue": "1"}]})).await.err("TagException");
}

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

// ---- BYOK: importing key material (spec §5) ----

#[tokio::test]
async fn external_keys_wait_for_material() {
    let h = start().await;
    let id = external_key(&h).await;
    let m = h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"].clone();
    assert_eq!(
        (m["Origin"].as_str(), m["KeyState"].as_str(), m["Enabled"].as_bool()),
        (Some("EXTERNAL"), Some("PendingImport"), Some(false))
    );
    assert!(m.get("CurrentKeyMaterialId").is_none(), "{m}");
    h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.err("KMSInvalidStateException");
    h.call("GenerateDataKey", json!({"KeyId": id, "KeySpec": "AES_256"})).await.err("KMSInvalidStateException");
    h.call("GenerateDataKeyWithoutPlaintext", json!({"KeyId": id, "NumberOfBytes": 8}))
        .await
        .err("KMSInvalidStateException");
    h.call("EnableKey", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    h.call("EnableKeyRotation", json!({"KeyId": id})).await.err("UnsupportedOperationException");
    h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.err("UnsupportedOperationException");
    h.call("DeleteImportedKeyMaterial", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    // Import operations are only for EXTERNAL keys.
    let (aws_id, _) = create_key(&h).await;
    let body = json!({"KeyId": aws_id, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"});
    h.call("GetParametersForImport", body).await.err("UnsupportedOperationException");
    h.call("DeleteImportedKeyMaterial", json!({"KeyId": aws_id})).await.err("UnsupportedOperationException");
    // A listed external key is listed like any other; scheduling its deletion works.
    let r = h.call("ScheduleKeyDeletion", json!({"KeyId": id, "PendingWindowInDays": 7})).await.ok();
    assert_eq!(r["KeyState"], "PendingDeletion");
    let body = json!({"KeyId": id, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"});
    h.call("GetParametersForImport", body).await.err("KMSInvalidStateException");
    h.call("CancelKeyDeletion", json!({"KeyId": id})).await.ok();
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["KeyState"], "PendingImport");
}

#[tokio::test]
async fn import_encrypt_delete_reimport() {
    let h = start().await;
    let id = external_key(&h).await;
    let p = h
        .call(
            "GetParametersForImport",
            json!({"KeyId": id, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_3072"}),
        )
        .await
        .ok();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let valid_to = p["ParametersValidTo"].as_i64().unwrap();
    assert!((valid_to - now - 86_400).abs() < 60, "{p}");
    assert!(p["KeyId"].as_str().unwrap().ends_with(&id));
    let public = unb64(&p["PublicKey"]);
    assert_eq!(aws_lc_rs::rsa::PublicEncryptingKey::from_der(&public).unwrap().key_size_bits(), 3072);

    let material = [7u8; 32];
    let body = json!({"KeyId": id, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&wrap(&public, "RSAES_OAEP_SHA_256", &material)),
        "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"});
    let r = h.call("ImportKeyMaterial", body).await.ok();
    let mid = r["KeyMaterialId"].as_str().unwrap().to_string();
    assert_eq!(mid.len(), 64);
    let m = h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"].clone();
    assert_eq!((m["KeyState"].as_str(), m["Enabled"].as_bool()), (Some("Enabled"), Some(true)));
    assert_eq!(m["CurrentKeyMaterialId"], mid.as_str());
    assert_eq!(m["ExpirationModel"], "KEY_MATERIAL_DOES_NOT_EXPIRE");

    let ct =
        h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"byok"), "EncryptionContext": {"a": "b"}})).await.ok();
    let d =
        h.call("Decrypt", json!({"CiphertextBlob": ct["CiphertextBlob"], "EncryptionContext": {"a": "b"}})).await.ok();
    assert_eq!((unb64(&d["Plaintext"]), d["KeyMaterialId"].as_str()), (b"byok".to_vec(), Some(mid.as_str())));

    // Different material into a key that had material: refused, even while it has it.
    import(&h, &id, "RSAES_OAEP_SHA_256", &[8u8; 32]).await.err("IncorrectKeyMaterialException");

    // Delete: PendingImport, crypto fails; the old ciphertext too.
    let r = h.call("DeleteImportedKeyMaterial", json!({"KeyId": id})).await.ok();
    assert_eq!(r["KeyMaterialId"], mid.as_str());
    let m = h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"].clone();
    assert_eq!(m["KeyState"], "PendingImport");
    h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.err("KMSInvalidStateException");
    h.call("Decrypt", json!({"CiphertextBlob": ct["CiphertextBlob"], "EncryptionContext": {"a": "b"}}))
        .await
        .err("KMSInvalidStateException");
    h.call("EnableKey", json!({"KeyId": id})).await.err("KMSInvalidStateException");

    // Other material still refused; the same material (another algorithm) restores the key.
    import(&h, &id, "RSA_AES_KEY_WRAP_SHA_1", &[9u8; 32]).await.err("IncorrectKeyMaterialException");
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["KeyState"], "PendingImport");
    let r = import(&h, &id, "RSA_AES_KEY_WRAP_SHA_256", &material).await.ok();
    assert_eq!(r["KeyMaterialId"], mid.as_str());
    let d =
        h.call("Decrypt", json!({"CiphertextBlob": ct["CiphertextBlob"], "EncryptionContext": {"a": "b"}})).await.ok();
    assert_eq!(unb64(&d["Plaintext"]), b"byok");
    // Re-importing the same material while present is accepted (e.g. to change the expiry).
    import(&h, &id, "RSAES_OAEP_SHA_1", &material).await.ok();
    let dk = h.call("GenerateDataKey", json!({"KeyId": id, "KeySpec": "AES_256"})).await.ok();
    let d = h.call("Decrypt", json!({"CiphertextBlob": dk["CiphertextBlob"]})).await.ok();
    assert_eq!(d["Plaintext"], dk["Plaintext"]);

    // The material survives a restart of the store (sealed at rest).
    h.server.store().refresh().unwrap();
    let reopened = KeyStore::open(h.server.store().dir()).unwrap();
    let blob = unb64(&ct["CiphertextBlob"]);
    let ctx = [("a".to_string(), "b".to_string())].into_iter().collect();
    assert_eq!(&reopened.decrypt(&blob, &ctx).unwrap().plaintext[..], b"byok");
}

#[tokio::test]
async fn import_tokens_and_material_are_checked() {
    let h = start().await;
    let id = external_key(&h).await;
    let other = external_key(&h).await;
    let alg = "RSA_AES_KEY_WRAP_SHA_256";
    let (public, token) = import_params(&h, &id, alg, "RSA_2048").await;
    let call = |key: &str, token: String, enc: Vec<u8>| {
        let body = json!({"KeyId": key, "ImportToken": token, "EncryptedKeyMaterial": b64(&enc), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"});
        h.call("ImportKeyMaterial", body)
    };
    let good = wrap(&public, alg, &[1u8; 32]);

    // Tampered token (every region of it), truncated token, token of another key.
    let raw = STANDARD.decode(&token).unwrap();
    for i in [0, 1, raw.len() / 2, raw.len() - 1] {
        let mut t = raw.clone();
        t[i] ^= 1;
        call(&id, b64(&t), good.clone()).await.err("InvalidImportTokenException");
    }
    call(&id, b64(&raw[..raw.len() - 1]), good.clone()).await.err("InvalidImportTokenException");
    call(&other, token.clone(), good.clone()).await.err("InvalidImportTokenException");

    // Wrong material length (16 and 48 bytes), with either wrapping.
    call(&id, token.clone(), wrap(&public, alg, &[1u8; 16])).await.err("IncorrectKeyMaterialException");
    call(&id, token.clone(), wrap(&public, alg, &[1u8; 48])).await.err("IncorrectKeyMaterialException");
    let (p2, t2) = import_params(&h, &id, "RSAES_OAEP_SHA_1", "RSA_2048").await;
    call(&id, t2.clone(), wrap(&p2, "RSAES_OAEP_SHA_1", &[1u8; 31])).await.err("IncorrectKeyMaterialException");
    // Wrapped for the wrong key pair / algorithm, or garbage: cannot unwrap.
    call(&id, t2.clone(), wrap(&p2, "RSAES_OAEP_SHA_256", &[1u8; 32])).await.err("InvalidCiphertextException");
    call(&id, token.clone(), wrap(&p2, alg, &[1u8; 32])).await.err("InvalidCiphertextException");
    call(&id, token.clone(), vec![0u8; 300]).await.err("InvalidCiphertextException");
    // Expiry model rules.
    let body = json!({"KeyId": id, "ImportToken": token, "EncryptedKeyMaterial": b64(&good)});
    h.call("ImportKeyMaterial", body).await.err("ValidationException");
    let body = json!({"KeyId": id, "ImportToken": token, "EncryptedKeyMaterial": b64(&good), "ValidTo": 1000});
    h.call("ImportKeyMaterial", body).await.err("ValidationException");
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["KeyState"], "PendingImport");

    // Expired after 24 hours.
    h.server.clock().advance(86_400 + 5);
    call(&id, token.clone(), good.clone()).await.err("ExpiredImportTokenException");
    // A fresh token works.
    let (public, token) = import_params(&h, &id, alg, "RSA_2048").await;
    call(&id, token, wrap(&public, alg, &[1u8; 32])).await.ok();
}

#[tokio::test]
async fn imported_material_expires() {
    let h = start().await;
    let id = external_key(&h).await;
    let alg = "RSAES_OAEP_SHA_256";
    let (public, token) = import_params(&h, &id, alg, "RSA_2048").await;
    let valid_to = h.server.clock().now() + 3600;
    let body = json!({"KeyId": id, "ImportToken": token, "EncryptedKeyMaterial": b64(&wrap(&public, alg, &[3u8; 32])), "ValidTo": valid_to});
    h.call("ImportKeyMaterial", body).await.ok();
    let m = h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"].clone();
    assert_eq!((m["ExpirationModel"].as_str(), m["ValidTo"].as_i64()), (Some("KEY_MATERIAL_EXPIRES"), Some(valid_to)));
    let rot = h.call("ListKeyRotations", json!({"KeyId": id, "IncludeKeyMaterial": "ALL_KEY_MATERIAL"})).await.ok();
    let r0 = &rot["Rotations"][0];
    assert_eq!(
        (r0["ImportState"].as_str(), r0["KeyMaterialState"].as_str(), r0["ValidTo"].as_i64()),
        (Some("IMPORTED"), Some("CURRENT"), Some(valid_to)),
        "{rot}"
    );
    let ct = h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.ok();
    h.server.clock().advance(3601);
    let report = h.server.run_maintenance().unwrap();
    assert_eq!(report.expired, vec![id.clone()]);
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["KeyState"], "PendingImport");
    h.call("Decrypt", json!({"CiphertextBlob": ct["CiphertextBlob"]})).await.err("KMSInvalidStateException");
    import(&h, &id, alg, &[3u8; 32]).await.ok();
    h.call("Decrypt", json!({"CiphertextBlob": ct["CiphertextBlob"]})).await.ok();
}

#[tokio::test]
async fn envelope_context_prefix_is_reserved() {
    let h = start().await;
    let (id, _) = create_key(&h).await;
    let ctx = json!({"envelope:api": "kms-v2"});
    h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x"), "EncryptionContext": ctx}))
        .await
        .err("ValidationException");
    h.call("GenerateDataKey", json!({"KeyId": id, "KeySpec": "AES_256", "EncryptionContext": ctx}))
        .await
        .err("ValidationException");
    // A blob made by the plugin (context with envelope: keys) cannot be opened through the server.
    let ctx_map = [("envelope:api".to_string(), "kms-v2".to_string())].into_iter().collect();
    let blob =
        h.server.store().encrypt(&envelope_keystore::KeyRef::parse(&id).unwrap(), b"dek", &ctx_map).unwrap().blob;
    h.call("Decrypt", json!({"CiphertextBlob": b64(&blob), "EncryptionContext": ctx})).await.err("ValidationException");
    h.call("Decrypt", json!({"CiphertextBlob": b64(&blob)})).await.err("InvalidCiphertextException");
    let body = json!({"CiphertextBlob": b64(&blob), "SourceEncryptionContext": ctx, "DestinationKeyId": id});
    h.call("ReEncrypt", body).await.err("ValidationException");
}

/// Reads until the peer closes the connection (or `limit` passes); returns what was read and
/// whether the peer closed.
async fn read_until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

fn slow_config(timeout_ms: u64, max_connections: usize) -> Config {
    let mut c = Config::new(REGION, ACCOUNT);
    c.client_timeout = Duration::from_millis(timeout_ms);
    c.max_connections = max_connections;
    c
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let h = start_with(slow_config(300, 64)).await;
    // Headers that never finish (slowloris).
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: TrentService.ListKeys\r\n").await.unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "a request whose headers never end must not hold the connection");
    // A connection that never sends anything.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(closed, "an idle connection must be closed");
    // The server still answers.
    assert_eq!(h.call("ListKeys", json!({})).await.status, 200);
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_an_error() {
    let h = start_with(slow_config(300, 64)).await;
    let body = br#"{"KeyId":"alias/x","Plaintext":"AAAA"}"#;
    let headers = h.signed_headers("TrentService.Encrypt", body, body, &Signer::default());
    let mut req = String::from("POST / HTTP/1.1\r\n");
    for (k, v) in &headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(&body[..5]).await.unwrap();
    let (raw, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("SerializationException") && text.contains("not received within 300 ms"), "{text}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let h = start_with(slow_config(10_000, 2)).await;
    // Two clients hold both slots (connected, nothing sent).
    let a = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let _b = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third request is not served while they do...
    let port = h.port;
    let signer = Signer::default();
    let body = b"{}".to_vec();
    let headers = h.signed_headers("TrentService.ListKeys", &body, &body, &signer);
    let third = tokio::spawn(async move {
        let mut req = String::from("POST / HTTP/1.1\r\n");
        for (k, v) in &headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("content-length: 2\r\nconnection: close\r\n\r\n{}");
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        read_until_closed(&mut s, Duration::from_secs(20)).await.0
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "the third connection was served beyond the limit of 2");
    // ...and is served as soon as one of them goes away.
    drop(a);
    let raw = tokio::time::timeout(Duration::from_secs(10), third).await.expect("served after a slot freed").unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn limits_are_validated() {
    for (timeout_ms, conns) in [(50, 10), (5_000_000, 10), (1000, 0), (1000, 2_000_000)] {
        let c = slow_config(timeout_ms, conns);
        assert!(c.validate().is_err(), "{timeout_ms} ms, {conns} connections");
    }
    assert!(slow_config(1000, 10).validate().is_ok());
}

#[tokio::test]
async fn http2_prior_knowledge_with_authority_instead_of_host() {
    let h = start().await;
    let body = br#"{"Limit":5}"#.to_vec();
    // Signed over host = the authority, sent as HTTP/2 `:authority` with no Host header.
    let headers = h.signed_headers("TrentService.ListKeys", &body, &body, &Signer::default());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder().method("POST").uri(format!("http://127.0.0.1:{}/", h.port));
    for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
        req = req.header(k.as_str(), v.as_str());
    }
    let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    send.send_data(body.into(), true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status();
    let mut data = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = data.data().await {
        let chunk = chunk.unwrap();
        let _ = data.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert!(v.get("Keys").is_some(), "{v}");
}

#[tokio::test]
async fn a_partial_http2_preface_does_not_hold_the_connection() {
    let h = start_with(slow_config(300, 64)).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed);
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

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let h = start_with(slow_config(300, 64)).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let (_client, conn) = h2::client::handshake(tcp).await.unwrap();
    // The client answers pings by itself; with no request the server still closes it.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");
}

#[tokio::test]
async fn a_client_that_never_reads_its_responses_is_dropped() {
    let h = start_with(slow_config(300, 64)).await;
    let s = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let (_rd, mut wr) = s.into_split();
    // Pipelined requests, responses never read: the server's writes block once the buffers fill.
    let request = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}".repeat(64);
    let writer = tokio::spawn(async move {
        loop {
            if wr.write_all(&request).await.is_err() {
                return;
            }
        }
    });
    assert!(tokio::time::timeout(Duration::from_secs(20), writer).await.is_ok(), "the connection was never dropped");
    assert_eq!(h.call("ListKeys", json!({})).await.status, 200);
}

#[tokio::test]
async fn shutdown_does_not_wait_for_silent_connections() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(KeyStore::open(&dir.path().join("data")).unwrap());
    let creds = CredentialStore::new(vec![Credential::new(AKID, Zeroizing::new(SECRET.into()), None, ADMIN)]).unwrap();
    let server = Arc::new(Server::new(store, creds, Config::new(REGION, ACCOUNT)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, server, async move {
        let _ = rx.await;
    }));
    // Connected, nothing sent (a TCP health probe, say), and an idle keep-alive connection.
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (_h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), task).await.expect("serve returned").unwrap().unwrap();
    // The grace period (10 s) is for requests in progress; there were none.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
