//! etcd access for the inspector: connect (plain, or TLS with client certificates as a control
//! plane's etcd requires) and page through a key range with bounded memory.

use std::path::PathBuf;
use std::time::Duration;

use envelope_proto::etcdserverpb::kv_client::KvClient;
use envelope_proto::etcdserverpb::{PutRequest, RangeRequest};
use envelope_proto::mvccpb::KeyValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use anyhow::{Result, anyhow, bail};

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Endpoints: `http://host:port`, `https://host:port`, or `host:port` (https if TLS files
    /// are given, else http). Tried in order until one connects.
    pub endpoints: Vec<String>,
    /// CA bundle that signed etcd's server certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    pub key: Option<PathBuf>,
    /// Connect timeout.
    pub connect_timeout: Option<Duration>,
    /// Per-request timeout.
    pub request_timeout: Option<Duration>,
}

/// A connected etcd KV client.
#[derive(Debug, Clone)]
pub struct Etcd {
    kv: KvClient<Channel>,
}

fn etcd_err(context: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("etcd: {context}: {e}")
}

impl Etcd {
    /// Connects to the first endpoint that answers.
    pub async fn connect(o: &EtcdOptions) -> Result<Self> {
        if o.endpoints.is_empty() {
            bail!("no etcd endpoint given (--etcd)");
        }
        if o.cert.is_some() != o.key.is_some() {
            bail!("--cert and --key must be given together");
        }
        let tls_wanted = o.ca.is_some() || o.cert.is_some();
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &o.ca {
            let pem = std::fs::read(ca).map_err(|e| etcd_err(&format!("cannot read CA file {}", ca.display()), e))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(c), Some(k)) = (&o.cert, &o.key) {
            let cert =
                std::fs::read(c).map_err(|e| etcd_err(&format!("cannot read certificate {}", c.display()), e))?;
            let key = std::fs::read(k).map_err(|e| etcd_err(&format!("cannot read key {}", k.display()), e))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let mut last = None;
        for raw in &o.endpoints {
            let url = if raw.contains("://") {
                raw.clone()
            } else if tls_wanted {
                format!("https://{raw}")
            } else {
                format!("http://{raw}")
            };
            let mut ep =
                Endpoint::from_shared(url.clone()).map_err(|e| etcd_err(&format!("bad endpoint {raw:?}"), e))?;
            if let Some(t) = o.connect_timeout {
                ep = ep.connect_timeout(t);
            }
            if let Some(t) = o.request_timeout {
                ep = ep.timeout(t);
            }
            if url.starts_with("https://") {
                if o.ca.is_none() {
                    bail!("endpoint {raw} uses TLS: give the CA with --cacert");
                }
                ep = ep.tls_config(tls.clone()).map_err(|e| etcd_err("TLS configuration", e))?;
            } else if tls_wanted {
                bail!("TLS files given but endpoint {raw} is plain http");
            }
            match ep.connect().await {
                Ok(ch) => return Ok(Self { kv: KvClient::new(ch).max_decoding_message_size(64 * 1024 * 1024) }),
                Err(e) => last = Some(etcd_err(&format!("cannot connect to {url}"), error_chain(&e))),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("etcd: no endpoint")))
    }

    /// Reads one key.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>> {
        let r = self
            .kv
            .range(RangeRequest { key: key.to_vec(), ..Default::default() })
            .await
            .map_err(|e| etcd_err("range", e.message()))?
            .into_inner();
        Ok(r.kvs.into_iter().next())
    }

    /// Writes one key.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.kv
            .put(PutRequest { key: key.to_vec(), value: value.to_vec(), ..Default::default() })
            .await
            .map_err(|e| etcd_err("put", e.message()))?;
        Ok(())
    }

    /// Calls `f` for every key under `prefix`, `page` keys per request, all read at one revision
    /// so the result is a consistent snapshot. Only one page is held in memory at a time.
    pub async fn scan(&mut self, prefix: &[u8], page: i64, mut f: impl FnMut(KeyValue)) -> Result<u64> {
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut revision = 0i64;
        let mut n = 0u64;
        let mut page = page.max(1);
        loop {
            let r = match self
                .kv
                .range(RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    limit: page,
                    revision,
                    ..Default::default()
                })
                .await
            {
                Ok(r) => r.into_inner(),
                // A page of large values (ConfigMaps up to 1.5 MiB each) can exceed the message
                // limit: retry the same position with half the page.
                Err(e) if page > 1 && matches!(e.code(), tonic::Code::ResourceExhausted | tonic::Code::OutOfRange) => {
                    page = (page / 2).max(1);
                    continue;
                }
                Err(e) => return Err(etcd_err("range", e.message())),
            };
            if revision == 0 {
                revision = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
            }
            let more = r.more;
            let mut last = None;
            for kv in r.kvs {
                last = Some(kv.key.clone());
                n += 1;
                f(kv);
            }
            match (more, last) {
                (true, Some(mut k)) => {
                    k.push(0);
                    from = k;
                }
                _ => return Ok(n),
            }
        }
    }

    /// Counts keys under `prefix` without transferring values.
    pub async fn count(&mut self, prefix: &[u8]) -> Result<u64> {
        let r = self
            .kv
            .range(RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                count_only: true,
                ..Default::default()
            })
            .await
            .map_err(|e| etcd_err("range", e.message()))?
            .into_inner();
        Ok(r.count.max(0) as u64)
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's range_end for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_rules() {
        assert_eq!(prefix_end(b"/registry/secrets/"), b"/registry/secrets0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
