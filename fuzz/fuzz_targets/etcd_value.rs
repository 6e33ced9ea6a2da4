//! Arbitrary bytes as a stored etcd value: classification (with and without configured names),
//! decryption attempts with fixed key material, and object decoding of the bytes themselves and
//! of whatever decrypts; and the explanation the inspector prints for a value it cannot use (a
//! file from `etcdctl get`). None of it may panic.
#![no_main]

use envelope_inspect::{StaticProvider, classify, classify_with_names, decode_object, decrypt, input};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"/registry/secrets/default/fuzz";
const MATERIAL: [u8; 32] = [0x42; 32];

fuzz_target!(|data: &[u8]| {
    let c = classify(KEY, data);
    let _ = (c.to_string(), c.provider().as_str(), c.is_encrypted(), c.name());
    let _ = classify_with_names(KEY, data, &["p", "a:b", "key1"]);
    for candidate in input::candidates(data) {
        let c = classify(KEY, candidate);
        let _ = (input::is_well_formed(&c), input::explain(candidate, &c));
    }

    if let Ok(object) = decode_object(data) {
        let _ = object.to_json_pretty();
        let _ = object.summary();
    }
    let mut framed = b"k8s\0".to_vec();
    framed.extend_from_slice(data);
    let _ = decode_object(&framed);

    let mut plaintexts = Vec::new();
    plaintexts.extend(decrypt::kms_v2(KEY, data, &MATERIAL).ok());
    plaintexts.extend(decrypt::kms_v1(KEY, data, "p", &MATERIAL).ok().map(|p| p.plaintext));
    for provider in StaticProvider::ALL {
        plaintexts.extend(decrypt::static_key(provider, KEY, data, "key1", &MATERIAL).ok());
    }
    for plaintext in plaintexts {
        let _ = decode_object(&plaintext);
    }
});
