//! Key lifecycle over time: scheduled deletion, cancel and purge; descriptions; automatic and
//! on-demand rotation.

use envelope_test_support::kms::*;
use serde_json::json;

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
