//! Key identifiers and lookups, listing with pagination, tags.

use envelope_test_support::kms::*;
use serde_json::json;

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
    h.call("TagResource", json!({"KeyId": id, "Tags": many})).await.err("TagException");
    h.call("CreateKey", json!({"Tags": [{"TagKey": "aws:x", "TagValue": "1"}]})).await.err("TagException");
}

/// Concurrent TagResource calls never take a key past 50 tags: each adds 6 new ones, so exactly
/// 8 of 12 fit whatever their interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tagging_stays_within_the_limit() {
    let h = std::sync::Arc::new(start().await);
    let (id, _) = create_key(&h).await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..12 {
        let (h, id) = (h.clone(), id.clone());
        calls.spawn(async move {
            let tags: Vec<_> = (0..6).map(|i| json!({"TagKey": format!("t{n}-{i}"), "TagValue": "v"})).collect();
            h.call("TagResource", json!({"KeyId": id, "Tags": tags})).await.status
        });
    }
    let mut ok = 0;
    while let Some(status) = calls.join_next().await {
        ok += usize::from(status.unwrap() == 200);
    }
    assert_eq!(ok, 8);
    let listed = h.call("ListResourceTags", json!({"KeyId": id, "Limit": 50})).await.ok();
    assert_eq!(listed["Tags"].as_array().unwrap().len(), 48);
}
