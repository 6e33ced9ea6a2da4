//! gRPC request payloads of both KMS APIs, the annotation checks applied to them, and the
//! `grpc-timeout` header parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = envelope_proto::v2::DecryptRequest::decode(data) {
        let _ = envelope_plugin::format::check_annotations(&r.annotations);
        let _ = envelope_plugin::format::annotations_digest(&r.annotations);
    }
    let _ = envelope_proto::v2::EncryptRequest::decode(data);
    let _ = envelope_proto::v1beta1::EncryptRequest::decode(data);
    let _ = envelope_proto::v1beta1::DecryptRequest::decode(data);
    let _ = envelope_proto::v2::EncryptedObject::decode(data);
    let _ = envelope_plugin::deadline::parse_grpc_timeout(data);
});
