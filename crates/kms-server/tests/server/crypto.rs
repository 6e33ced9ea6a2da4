//! Encrypt, Decrypt, ReEncrypt, data keys and random bytes: every key form, encryption contexts,
//! tampered ciphertexts, rotation and disabled keys, the reserved `envelope:` context prefix.

use envelope_test_support::kms::*;
use serde_json::json;

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
    assert_eq!(r["KeyId"], arn);
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
