//! The Kubernetes API side of `envelope reencrypt`: a client from a kubeconfig or the pod's
//! in-cluster configuration, one GET + PUT per object (through the dynamic API, so every
//! resource and every field round-trips unchanged), and object names for `--all`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;

use super::retry::{Failure, failure_of_status};
use super::select::Resource;

/// The field manager named in our PUTs (shown in managedFields if a PUT ever changes a field).
pub const FIELD_MANAGER: &str = "envelope-reencrypt";

/// How to reach the API server (kubectl's conventions).
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// `--kubeconfig`; else `$KUBECONFIG`, `~/.kube/config`, then the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`; else the kubeconfig's current context.
    pub context: Option<String>,
    /// Limit on each request.
    pub request_timeout: Duration,
}

/// A client as kubectl would build it. Errors are configuration errors (no kubeconfig, unknown
/// context, unreadable certificate files); nothing is contacted yet.
pub async fn client(o: &KubeOptions) -> Result<kube::Client> {
    let options = KubeConfigOptions { context: o.context.clone(), ..Default::default() };
    let mut config = match &o.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None if o.context.is_some() => {
            kube::Config::from_kubeconfig(&options).await.context("kubeconfig ($KUBECONFIG or ~/.kube/config)")?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (give --kubeconfig, set KUBECONFIG, or run in a pod)")?,
    };
    // Our own retry policy applies (retry.rs); the client's would multiply the attempts.
    config.default_retry = false;
    config.connect_timeout = Some(o.request_timeout.min(Duration::from_secs(10)));
    config.read_timeout = Some(o.request_timeout);
    config.write_timeout = Some(o.request_timeout);
    kube::Client::try_from(config).context("cannot build the Kubernetes client")
}

/// The dynamic-API description of a core resource.
pub fn api_resource(r: &Resource) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", r.kind), r.plural)
}

/// A failed request: how to treat it and what to tell the user.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    /// For the retry policy.
    pub failure: Failure,
    /// One line for the user.
    pub message: String,
}

impl From<kube::Error> for ApiFailure {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) => {
                let reason = if s.reason.is_empty() { String::new() } else { format!(" {}", s.reason) };
                ApiFailure { failure: failure_of_status(s.code), message: format!("{}{reason}: {}", s.code, s.message) }
            }
            kube::Error::HyperError(_) | kube::Error::Service(_) if is_certificate_error(&e) => {
                let mut message = error_chain(&e);
                if message.contains("CaUsedAsEndEntity") {
                    message.push_str(
                        " (the API server presents a CA certificate as its own serving certificate; unlike Go's, this TLS stack \
                         accepts only a serving certificate issued by the CA of the kubeconfig)",
                    );
                }
                ApiFailure { failure: Failure::Fatal, message }
            }
            kube::Error::HyperError(_) | kube::Error::Service(_) => {
                ApiFailure { failure: Failure::Transient, message: error_chain(&e) }
            }
            kube::Error::Auth(_) => ApiFailure { failure: Failure::Fatal, message: error_chain(&e) },
            _ => ApiFailure { failure: Failure::Permanent, message: error_chain(&e) },
        }
    }
}

/// What a successful PUT did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// A new resourceVersion: the object was stored again.
    Written,
    /// Same resourceVersion: kube-apiserver found nothing to change (the stored value was
    /// already under its first provider and current key).
    Unchanged,
}

/// GETs the object and PUTs it back unchanged (guarded by its resourceVersion, so a concurrent
/// change gives 409 rather than being overwritten).
pub async fn get_and_replace(api: &Api<DynamicObject>, name: &str) -> Result<Put, ApiFailure> {
    let object = api.get(name).await?;
    let before = object.metadata.resource_version.clone();
    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
    let after = api.replace(name, &params, &object).await?;
    Ok(if before.is_some() && after.metadata.resource_version == before { Put::Unchanged } else { Put::Written })
}

/// One page of (namespace, name) of every object of `api`'s resource, and the token for the next.
pub async fn list_page(
    api: &Api<DynamicObject>,
    limit: u32,
    token: Option<String>,
) -> Result<(Vec<(String, String)>, Option<String>), ApiFailure> {
    let mut params = ListParams::default().limit(limit);
    if let Some(t) = token {
        params = params.continue_token(&t);
    }
    let list = api.list_metadata(&params).await?;
    let names = list.items.into_iter().filter_map(|o| Some((o.metadata.namespace?, o.metadata.name?))).collect();
    Ok((names, list.metadata.continue_.filter(|t| !t.is_empty())))
}

/// Whether `e` was caused by a server certificate rustls does not trust (retrying cannot help).
fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    // Walk the causes; io::Error's source() skips the error it wraps, so look inside those too.
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    let mut seen = 0;
    while let Some(err) = pending.pop() {
        seen += 1;
        if seen > 32 {
            break;
        }
        if let Some(r) = err.downcast_ref::<rustls::Error>()
            && matches!(r, rustls::Error::InvalidCertificate(_))
        {
            return true;
        }
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            pending.push(inner);
        }
        if let Some(source) = err.source() {
            pending.push(source);
        }
    }
    false
}

/// Asks the API server for its version: proves it is reachable, trusted and accepts the
/// credentials before any object is touched.
pub async fn preflight(client: &kube::Client) -> Result<String, ApiFailure> {
    let v = client.apiserver_version().await?;
    Ok(v.git_version)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_resources_map_to_v1_urls() {
        let ar = api_resource(super::super::select::resource("configmaps").unwrap());
        assert_eq!((ar.group.as_str(), ar.version.as_str(), ar.api_version.as_str()), ("", "v1", "v1"));
        assert_eq!((ar.kind.as_str(), ar.plural.as_str()), ("ConfigMap", "configmaps"));
    }

    #[test]
    fn untrusted_server_certificates_are_fatal() {
        let tls = || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let f = ApiFailure::from(kube::Error::Service(Box::new(std::io::Error::other(tls()))));
        assert_eq!(f.failure, Failure::Fatal, "{}", f.message);
        // Nested io::Errors, as TLS stacks wrap them.
        let nested = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls()));
        assert_eq!(ApiFailure::from(kube::Error::Service(Box::new(nested))).failure, Failure::Fatal);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(ApiFailure::from(kube::Error::Service(Box::new(refused))).failure, Failure::Transient);
    }

    #[test]
    fn api_errors_keep_their_status_code() {
        let status = kube::core::Status::failure("the object has been modified", "Conflict").with_code(409);
        let f = ApiFailure::from(kube::Error::Api(status.boxed()));
        assert_eq!(f.failure, Failure::Conflict);
        assert!(f.message.starts_with("409 Conflict: the object has been modified"), "{}", f.message);
        let status = kube::core::Status::failure("etcdserver: request timed out", "InternalError").with_code(500);
        assert_eq!(ApiFailure::from(kube::Error::Api(status.boxed())).failure, Failure::Transient);
    }
}
