//! Aliases: create, update, delete, list, and their rules.

use envelope_test_support::kms::*;
use serde_json::json;

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
