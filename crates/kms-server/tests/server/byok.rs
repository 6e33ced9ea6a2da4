//! BYOK (spec §5): keys waiting for material, import parameters and tokens, importing, deleting and
//! re-importing material, expiry.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envelope_keystore::KeyStore;
use envelope_test_support::kms::*;
use serde_json::json;

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
    h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.err("KMSInvalidStateException");
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
