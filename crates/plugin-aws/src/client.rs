//! Building the `aws-sdk-kms` client the backend uses: the standard AWS configuration chain
//! (environment, profile, web identity, container and instance metadata) plus the plugin's
//! options, checked at start so a plugin that could never be healthy does not start at all.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// How to reach the KMS endpoint, on top of the standard AWS configuration chain.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Region (else the chain's: `AWS_REGION`, the profile, ...).
    pub region: Option<String>,
    /// Endpoint URL (else the chain's `AWS_ENDPOINT_URL(_KMS)`, else the region's AWS KMS).
    pub endpoint: Option<String>,
    /// Use the region's FIPS endpoint.
    pub fips: bool,
    /// Extra CA certificates to trust for the endpoint (the system roots stay).
    pub ca_bundle: Option<CaBundle>,
}

/// A PEM bundle of CA certificates and the file it came from.
#[derive(Debug, Clone)]
pub struct CaBundle {
    /// Where it was read from (named in logs and errors).
    pub path: PathBuf,
    /// The PEM text.
    pub pem: Vec<u8>,
}

/// Why no client could be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No region anywhere.
    #[error("the aws backend has no region: pass --region (or region: in the config file), or set AWS_REGION")]
    NoRegion,
    /// The configuration has no credentials provider.
    #[error("the aws backend has no credentials provider")]
    NoCredentialsProvider,
    /// The credentials chain found nothing (the causes, in one line).
    #[error(
        "the aws backend found no credentials ({0}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, \
         a web identity token (IRSA), or run where an instance or task role is available"
    )]
    NoCredentials(String),
    /// The credentials chain did not answer in time.
    #[error(
        "the aws backend found no credentials within 15 s (the standard chain: environment, profile, web identity, \
         container and instance metadata)"
    )]
    CredentialsTimeout,
    /// The CA bundle could not be turned into a trust store.
    #[error("ca-bundle {}: {message}", path.display())]
    CaBundle {
        /// The bundle's file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl ClientError {
    /// A mistake in the configuration (region, credentials): bad usage rather than a failure.
    pub fn is_config(&self) -> bool {
        !matches!(self, ClientError::CaBundle { .. })
    }
}

/// How long the credentials chain may take at start.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(15);

/// Loads the AWS configuration with `o` on top and checks that it has a region and that the
/// credentials chain yields credentials (else the plugin would serve but never be healthy, and
/// try the instance metadata service again on every call).
pub async fn build_client(o: &ClientOptions) -> Result<aws_sdk_kms::Client, ClientError> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = &o.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(e) = &o.endpoint {
        loader = loader.endpoint_url(e.clone());
    }
    if o.fips {
        loader = loader.use_fips(true);
    }
    if let Some(bundle) = &o.ca_bundle {
        use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
        let trust = TlsContext::builder()
            // The system roots stay: credential providers (STS for web identity) use this
            // client too.
            .with_trust_store(TrustStore::default().with_pem_certificate(bundle.pem.clone()))
            .build()
            .map_err(|e| ClientError::CaBundle { path: bundle.path.clone(), message: e.to_string() })?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
            .tls_context(trust)
            .build_https();
        loader = loader.http_client(http);
        tracing::info!(ca_bundle = %bundle.path.display(), "trusting the CA certificates of the bundle for the KMS endpoint");
    }
    let sdk_config = loader.load().await;
    check_setup(&sdk_config).await?;
    Ok(aws_sdk_kms::Client::new(&sdk_config))
}

/// The mistakes that would otherwise start a plugin that serves but can never be healthy: no
/// region, and no credentials anywhere in the standard AWS chain.
async fn check_setup(c: &aws_config::SdkConfig) -> Result<(), ClientError> {
    use aws_credential_types::provider::ProvideCredentials;
    if c.region().is_none() {
        return Err(ClientError::NoRegion);
    }
    let Some(provider) = c.credentials_provider() else {
        return Err(ClientError::NoCredentialsProvider);
    };
    match tokio::time::timeout(CREDENTIALS_TIMEOUT, provider.provide_credentials()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ClientError::NoCredentials(crate::one_line(&e))),
        Err(_) => Err(ClientError::CredentialsTimeout),
    }
}

/// The KMS endpoint as the banner and logs name it: `endpoint` when given, else the one the
/// AWS SDK takes from the environment (`AWS_ENDPOINT_URL_KMS`, then `AWS_ENDPOINT_URL`, unless
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`), else the region's AWS KMS endpoint. `env` reads
/// an environment variable.
pub fn describe_endpoint(endpoint: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    if let Some(e) = endpoint {
        return e.to_owned();
    }
    let ignored = env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !ignored {
        for var in ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"] {
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                return format!("{v} (from {var})");
            }
        }
    }
    "(the region's AWS KMS endpoint)".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_named_as_the_sdk_picks_it() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(describe_endpoint(Some("https://kms.local"), env(&[])), "https://kms.local");
        assert_eq!(describe_endpoint(None, env(&[])), "(the region's AWS KMS endpoint)");
        let both = env(&[("AWS_ENDPOINT_URL", "http://a"), ("AWS_ENDPOINT_URL_KMS", "http://k")]);
        assert_eq!(describe_endpoint(None, both), "http://k (from AWS_ENDPOINT_URL_KMS)");
        assert_eq!(
            describe_endpoint(None, env(&[("AWS_ENDPOINT_URL", "http://a")])),
            "http://a (from AWS_ENDPOINT_URL)"
        );
        let ignored = env(&[("AWS_ENDPOINT_URL_KMS", "http://k"), ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")]);
        assert_eq!(describe_endpoint(None, ignored), "(the region's AWS KMS endpoint)");
    }

    #[test]
    fn only_the_ca_bundle_is_not_a_configuration_mistake() {
        assert!(ClientError::NoRegion.is_config());
        assert!(ClientError::CredentialsTimeout.is_config());
        assert!(!ClientError::CaBundle { path: "/b.pem".into(), message: "bad".into() }.is_config());
    }
}
