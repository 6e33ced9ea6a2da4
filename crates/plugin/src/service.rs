//! The gRPC services: KMS v2 and KMS v1beta1, thin adapters over [`Plugin`].

use tokio::time::Instant;

use envelope_proto::{v1beta1, v2};
use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use crate::backend::KeyBackend;
use crate::deadline;
use crate::error::PluginError;
use crate::plugin::Plugin;
use tracing::Instrument;

/// The only `version` kube-apiserver sends and accepts on KMS v1beta1.
pub const V1_VERSION: &str = "v1beta1";

/// KMS v2 service.
pub struct V2Service<B: KeyBackend>(pub Plugin<B>);
/// KMS v1beta1 service.
pub struct V1Service<B: KeyBackend>(pub Plugin<B>);

fn finish<T>(
    p: &Plugin<impl KeyBackend>,
    api: &'static str,
    method: &'static str,
    uid: &str,
    start: Instant,
    r: Result<T, PluginError>,
) -> Result<Response<T>, Status> {
    let code = r.as_ref().map(|_| tonic::Code::Ok).unwrap_or_else(|e| e.code());
    p.metrics().rpc(api, method, code, start.elapsed());
    let _instance = p.span().enter();
    match r {
        Ok(v) => {
            tracing::debug!(api, method, uid, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            tracing::warn!(api, method, uid, code = ?e.code(), error = %e, "request failed");
            Err(e.to_status())
        }
    }
}

#[tonic::async_trait]
impl<B: KeyBackend> v2::key_management_service_server::KeyManagementService for V2Service<B> {
    async fn status(&self, _req: Request<v2::StatusRequest>) -> Result<Response<v2::StatusResponse>, Status> {
        let start = Instant::now();
        let h = self.0.health();
        let r = match &h.key_id {
            Some(key_id) => Ok(v2::StatusResponse {
                version: self.0.config().status_version.clone(),
                healthz: h.healthz(),
                key_id: key_id.clone(),
            }),
            None => Err(PluginError::Unavailable(format!("no usable key yet: {}", h.healthz()))),
        };
        finish(&self.0, "v2", "Status", "", start, r)
    }

    async fn encrypt(&self, req: Request<v2::EncryptRequest>) -> Result<Response<v2::EncryptResponse>, Status> {
        let start = Instant::now();
        let until = deadline::of_request(start, req.metadata(), self.0.config().request_timeout);
        let mut req = req.into_inner();
        let r = deadline::scope(until, self.0.encrypt_v2(&req.plaintext))
            .instrument(self.0.span().clone())
            .await
            .map(|(ciphertext, key_id, annotations)| v2::EncryptResponse { ciphertext, key_id, annotations });
        req.plaintext.zeroize();
        finish(&self.0, "v2", "Encrypt", &req.uid, start, r)
    }

    async fn decrypt(&self, req: Request<v2::DecryptRequest>) -> Result<Response<v2::DecryptResponse>, Status> {
        let start = Instant::now();
        let until = deadline::of_request(start, req.metadata(), self.0.config().request_timeout);
        let req = req.into_inner();
        if req.ciphertext.is_empty() {
            let e = PluginError::InvalidCiphertext("ciphertext is empty".into());
            return finish(&self.0, "v2", "Decrypt", &req.uid, start, Err(e));
        }
        // The plaintext leaves through the response; prost does not zeroize it, but our copy is.
        let r = deadline::scope(until, self.0.decrypt_v2(&req.ciphertext, &req.key_id, &req.annotations))
            .instrument(self.0.span().clone())
            .await
            .map(|p| v2::DecryptResponse { plaintext: p.to_vec() });
        finish(&self.0, "v2", "Decrypt", &req.uid, start, r)
    }
}

fn check_v1_version(v: &str) -> Result<(), PluginError> {
    if v == V1_VERSION {
        Ok(())
    } else {
        Err(PluginError::InvalidRequest(format!("unsupported KMS API version {v:?}; expected {V1_VERSION:?}")))
    }
}

#[tonic::async_trait]
impl<B: KeyBackend> v1beta1::key_management_service_server::KeyManagementService for V1Service<B> {
    async fn version(
        &self,
        req: Request<v1beta1::VersionRequest>,
    ) -> Result<Response<v1beta1::VersionResponse>, Status> {
        let start = Instant::now();
        let req = req.into_inner();
        let r = if req.version.is_empty() { Ok(()) } else { check_v1_version(&req.version) }.map(|_| {
            v1beta1::VersionResponse {
                version: V1_VERSION.to_string(),
                runtime_name: "envelope".to_string(),
                runtime_version: env!("CARGO_PKG_VERSION").to_string(),
            }
        });
        finish(&self.0, "v1beta1", "Version", "", start, r)
    }

    async fn encrypt(
        &self,
        req: Request<v1beta1::EncryptRequest>,
    ) -> Result<Response<v1beta1::EncryptResponse>, Status> {
        let start = Instant::now();
        let until = deadline::of_request(start, req.metadata(), self.0.config().request_timeout);
        let mut req = req.into_inner();
        let r = match check_v1_version(&req.version) {
            Ok(()) => deadline::scope(until, self.0.encrypt_v1(&req.plain))
                .instrument(self.0.span().clone())
                .await
                .map(|cipher| v1beta1::EncryptResponse { cipher }),
            Err(e) => Err(e),
        };
        req.plain.zeroize();
        finish(&self.0, "v1beta1", "Encrypt", "", start, r)
    }

    async fn decrypt(
        &self,
        req: Request<v1beta1::DecryptRequest>,
    ) -> Result<Response<v1beta1::DecryptResponse>, Status> {
        let start = Instant::now();
        let until = deadline::of_request(start, req.metadata(), self.0.config().request_timeout);
        let req = req.into_inner();
        let r = match check_v1_version(&req.version) {
            Ok(()) => deadline::scope(until, self.0.decrypt_v1(&req.cipher))
                .instrument(self.0.span().clone())
                .await
                .map(|p| v1beta1::DecryptResponse { plain: p.to_vec() }),
            Err(e) => Err(e),
        };
        finish(&self.0, "v1beta1", "Decrypt", "", start, r)
    }
}
