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

/// An ImportKeyMaterial call with the extra members of multi-material import.
async fn import_as(h: &KeyServer, id: &str, material: &[u8], extra: serde_json::Value) -> Reply {
    let alg = "RSAES_OAEP_SHA_256";
    let (public, token) = import_params(h, id, alg, "RSA_2048").await;
    let mut body = json!({"KeyId": id, "ImportToken": token, "EncryptedKeyMaterial": b64(&wrap(&public, alg, material)),
        "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    h.call("ImportKeyMaterial", body).await
}

async fn materials(h: &KeyServer, id: &str) -> Vec<serde_json::Value> {
    let r = h.call("ListKeyRotations", json!({"KeyId": id, "IncludeKeyMaterial": "ALL_KEY_MATERIAL"})).await.ok();
    r["Rotations"].as_array().unwrap().clone()
}

/// The refusals of multi-material import and on-demand rotation of imported material, before
/// the way it works: nothing refused changes the key.
#[tokio::test]
async fn imported_material_rotation_refusals() {
    let h = start().await;
    let id = external_key(&h).await;
    let arn =
        h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    // Nothing imported yet: no rotation, no existing material, nothing to delete by id.
    let e = h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    assert_eq!(e, format!("{arn} is pending import."));
    import_as(&h, &id, &[1u8; 32], json!({"ImportType": "EXISTING_KEY_MATERIAL"}))
        .await
        .err("IncorrectKeyMaterialException");
    // A material id with NEW_KEY_MATERIAL: refused before anything is unwrapped.
    let mid = "a".repeat(64);
    import_as(&h, &id, &[1u8; 32], json!({"ImportType": "NEW_KEY_MATERIAL", "KeyMaterialId": mid}))
        .await
        .err("ValidationException");
    import_as(&h, &id, &[1u8; 32], json!({"ImportType": "SOMETIMES"})).await.err("ValidationException");
    import_as(&h, &id, &[1u8; 32], json!({"KeyMaterialDescription": "semi;colon"})).await.err("ValidationException");
    import_as(&h, &id, &[1u8; 32], json!({"KeyMaterialDescription": "x".repeat(257)})).await.err("ValidationException");
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["KeyState"], "PendingImport");

    let m1 = import_as(&h, &id, &[1u8; 32], json!({"KeyMaterialDescription": "first one"})).await.ok()["KeyMaterialId"]
        .as_str()
        .unwrap()
        .to_string();
    let e = h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    assert_eq!(e, format!("No available key material pending rotation for the key: {arn}."));
    // The same material again as new: it is already associated.
    import_as(&h, &id, &[1u8; 32], json!({"ImportType": "NEW_KEY_MATERIAL"}))
        .await
        .err("IncorrectKeyMaterialException");
    // Other bytes under the current material's id, or an id the key does not have.
    import_as(&h, &id, &[2u8; 32], json!({"KeyMaterialId": m1})).await.err("IncorrectKeyMaterialException");
    import_as(&h, &id, &[1u8; 32], json!({"KeyMaterialId": "b".repeat(64)})).await.err("IncorrectKeyMaterialException");
    // Deleting material the key does not have.
    h.call("DeleteImportedKeyMaterial", json!({"KeyId": id, "KeyMaterialId": "c".repeat(64)}))
        .await
        .err("NotFoundException");
    // One material pending rotation at a time.
    import_as(&h, &id, &[2u8; 32], json!({"ImportType": "NEW_KEY_MATERIAL"})).await.ok();
    let e =
        import_as(&h, &id, &[3u8; 32], json!({"ImportType": "NEW_KEY_MATERIAL"})).await.err("KMSInvalidStateException");
    assert!(e.starts_with(&format!("{arn} already has key material pending rotation")), "{}", e);
    // A disabled key does not rotate.
    h.call("DisableKey", json!({"KeyId": id})).await.ok();
    h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.err("DisabledException");
    h.call("EnableKey", json!({"KeyId": id})).await.ok();
    let m = materials(&h, &id).await;
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(
        h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["CurrentKeyMaterialId"],
        m1.as_str()
    );
    // Generated keys still refuse import calls.
    let (aws_id, _) = create_key(&h).await;
    h.call("DeleteImportedKeyMaterial", json!({"KeyId": aws_id, "KeyMaterialId": m1}))
        .await
        .err("UnsupportedOperationException");
}

/// New material, on-demand rotation to it, both materials decrypting, one deleted and
/// re-imported: what AWS documents for symmetric keys with imported material.
#[tokio::test]
async fn imported_material_rotates_on_demand() {
    let h = start().await;
    let id = external_key(&h).await;
    let ctx = json!({"app": "x"});
    let m1 = import_as(&h, &id, &[1u8; 32], json!({"KeyMaterialDescription": "first one"})).await.ok()["KeyMaterialId"]
        .as_str()
        .unwrap()
        .to_string();
    let ct1 = h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"one"), "EncryptionContext": ctx})).await.ok();
    let dk1 = h.call("GenerateDataKey", json!({"KeyId": id, "KeySpec": "AES_256"})).await.ok();
    assert_eq!(dk1["KeyMaterialId"], m1.as_str());

    let valid_to = h.server.clock().now() + 7200;
    let r = import_as(
        &h,
        &id,
        &[2u8; 32],
        json!({"ImportType": "NEW_KEY_MATERIAL", "KeyMaterialDescription": "second one", "ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": valid_to}),
    )
    .await
    .ok();
    let m2 = r["KeyMaterialId"].as_str().unwrap().to_string();
    assert_ne!(m1, m2);
    // Listed pending rotation, without rotation date or type; not listed as a rotation yet.
    let m = materials(&h, &id).await;
    assert_eq!(m[0]["KeyMaterialState"], "CURRENT");
    assert_eq!(m[0]["KeyMaterialDescription"], "first one");
    assert_eq!(m[0]["ExpirationModel"], "KEY_MATERIAL_DOES_NOT_EXPIRE");
    assert_eq!(
        (m[1]["KeyMaterialId"].as_str(), m[1]["KeyMaterialState"].as_str(), m[1]["ImportState"].as_str()),
        (Some(m2.as_str()), Some("PENDING_ROTATION"), Some("IMPORTED"))
    );
    assert_eq!(
        (m[1]["ValidTo"].as_i64(), m[1]["KeyMaterialDescription"].as_str()),
        (Some(valid_to), Some("second one"))
    );
    assert!(m[1].get("RotationDate").is_none() && m[1].get("RotationType").is_none(), "{}", m[1]);
    let only = h.call("ListKeyRotations", json!({"KeyId": id})).await.ok();
    assert!(only["Rotations"].as_array().unwrap().is_empty(), "{only}");
    // Encryption still uses the current material.
    let dk = h.call("GenerateDataKey", json!({"KeyId": id, "KeySpec": "AES_256"})).await.ok();
    assert_eq!(dk["KeyMaterialId"], m1.as_str());

    let r = h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.ok();
    assert!(r["KeyId"].as_str().unwrap().starts_with("arn:aws:kms:"));
    let meta = h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"].clone();
    assert_eq!((meta["CurrentKeyMaterialId"].as_str(), meta["ValidTo"].as_i64()), (Some(m2.as_str()), Some(valid_to)));
    let ct2 = h.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"two"), "EncryptionContext": ctx})).await.ok();
    let dk2 = h.call("GenerateDataKey", json!({"KeyId": id, "KeySpec": "AES_256"})).await.ok();
    assert_eq!(dk2["KeyMaterialId"], m2.as_str());
    for (ct, text, mid) in [(&ct1, &b"one"[..], &m1), (&ct2, b"two", &m2)] {
        let d = h.call("Decrypt", json!({"CiphertextBlob": ct["CiphertextBlob"], "EncryptionContext": ctx})).await.ok();
        assert_eq!((unb64(&d["Plaintext"]), d["KeyMaterialId"].as_str()), (text.to_vec(), Some(mid.as_str())));
    }
    let rot = h.call("ListKeyRotations", json!({"KeyId": id})).await.ok();
    let rot = rot["Rotations"].as_array().unwrap();
    assert_eq!(rot.len(), 1);
    assert_eq!(
        (rot[0]["KeyMaterialId"].as_str(), rot[0]["KeyMaterialState"].as_str(), rot[0]["RotationType"].as_str()),
        (Some(m2.as_str()), Some("CURRENT"), Some("ON_DEMAND"))
    );
    assert!(rot[0]["RotationDate"].as_i64().is_some_and(|t| t <= h.server.clock().now()), "{}", rot[0]);
    assert_eq!(materials(&h, &id).await[0]["KeyMaterialState"], "NON_CURRENT");
    // Paging over the materials.
    let p1 = h
        .call("ListKeyRotations", json!({"KeyId": id, "IncludeKeyMaterial": "ALL_KEY_MATERIAL", "Limit": 1}))
        .await
        .ok();
    assert_eq!(
        (p1["Truncated"].as_bool(), p1["Rotations"][0]["KeyMaterialId"].as_str()),
        (Some(true), Some(m1.as_str()))
    );
    let p2 = h
        .call(
            "ListKeyRotations",
            json!({"KeyId": id, "IncludeKeyMaterial": "ALL_KEY_MATERIAL", "Marker": p1["NextMarker"]}),
        )
        .await
        .ok();
    assert_eq!(
        (p2["Truncated"].as_bool(), p2["Rotations"][0]["KeyMaterialId"].as_str()),
        (Some(false), Some(m2.as_str()))
    );

    // Deleting the first material: it waits for re-import, and so does the key (AWS: deleting
    // any permanently associated material makes the key PendingImport).
    let r = h.call("DeleteImportedKeyMaterial", json!({"KeyId": id, "KeyMaterialId": m1})).await.ok();
    assert_eq!(r["KeyMaterialId"], m1.as_str());
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["KeyState"], "PendingImport");
    let m = materials(&h, &id).await;
    assert_eq!(
        (m[0]["ImportState"].as_str(), m[0]["KeyMaterialState"].as_str()),
        (Some("PENDING_IMPORT"), Some("NON_CURRENT"))
    );
    assert!(m[0].get("ExpirationModel").is_none(), "{}", m[0]);
    for ct in [&ct1, &ct2] {
        h.call("Decrypt", json!({"CiphertextBlob": ct["CiphertextBlob"], "EncryptionContext": ctx}))
            .await
            .err("KMSInvalidStateException");
    }
    h.call("DeleteImportedKeyMaterial", json!({"KeyId": id, "KeyMaterialId": m1}))
        .await
        .err("KMSInvalidStateException");
    // Re-import of the first material by its id restores both.
    let r =
        import_as(&h, &id, &[1u8; 32], json!({"ImportType": "EXISTING_KEY_MATERIAL", "KeyMaterialId": m1})).await.ok();
    assert_eq!(r["KeyMaterialId"], m1.as_str());
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["KeyState"], "Enabled");
    assert_eq!(materials(&h, &id).await[0]["KeyMaterialDescription"], "first one", "kept");
    for ct in [&ct1, &ct2] {
        h.call("Decrypt", json!({"CiphertextBlob": ct["CiphertextBlob"], "EncryptionContext": ctx})).await.ok();
    }

    // Per-material expiry: the current material expires, the key waits for it.
    h.server.clock().advance(7201);
    let report = h.server.run_maintenance().unwrap();
    assert_eq!(report.expired, vec![id.clone()]);
    let m = materials(&h, &id).await;
    assert_eq!(
        (m[0]["ImportState"].as_str(), m[1]["ImportState"].as_str()),
        (Some("IMPORTED"), Some("PENDING_IMPORT"))
    );
    assert_eq!(h.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["KeyState"], "PendingImport");
    // Without an id, DeleteImportedKeyMaterial deletes the current material: already gone.
    h.call("DeleteImportedKeyMaterial", json!({"KeyId": id})).await.err("KMSInvalidStateException");
    import_as(&h, &id, &[2u8; 32], json!({})).await.ok();
    h.call("Decrypt", json!({"CiphertextBlob": ct2["CiphertextBlob"], "EncryptionContext": ctx})).await.ok();
}

/// The on-demand rotation quota counts rotations of imported material too.
#[tokio::test]
async fn imported_material_rotations_count_against_the_quota() {
    let mut config = envelope_kms_server::Config::new(REGION, ACCOUNT);
    config.max_on_demand_rotations = 2;
    let h = start_with(config).await;
    let id = external_key(&h).await;
    import_as(&h, &id, &[0u8; 32], json!({})).await.ok();
    for i in 1..=2u8 {
        import_as(&h, &id, &[i; 32], json!({"ImportType": "NEW_KEY_MATERIAL"})).await.ok();
        h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.ok();
    }
    import_as(&h, &id, &[3u8; 32], json!({"ImportType": "NEW_KEY_MATERIAL"})).await.ok();
    h.call("RotateKeyOnDemand", json!({"KeyId": id})).await.err("LimitExceededException");
    let rot = h.call("ListKeyRotations", json!({"KeyId": id})).await.ok();
    assert_eq!(rot["Rotations"].as_array().unwrap().len(), 2);
}
