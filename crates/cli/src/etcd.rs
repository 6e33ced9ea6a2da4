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

/// An RPC's error: etcd's message, or what broke the connection.
fn rpc_err(context: &str, status: &tonic::Status) -> anyhow::Error {
    if is_connection_failure(status) {
        etcd_err(context, format!("connection failed: {}", dedup_chain(&causes(status))))
    } else {
        etcd_err(context, status.message())
    }
}

impl Etcd {
    /// Connects to the first endpoint that answers etcd's KV API. A failure says what is wrong
    /// (refused, TLS against a plain server or the reverse, an unknown CA, a rejected client
    /// certificate, ...) with a hint, in one line.
    pub async fn connect(o: &EtcdOptions) -> Result<Self> {
        check_endpoints(&o.endpoints)?;
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
            let https = url.starts_with("https://");
            if https {
                if o.ca.is_none() {
                    bail!("endpoint {raw} uses TLS: give the CA that signed etcd's certificate with --cacert");
                }
                ep = ep.tls_config(tls.clone()).map_err(|e| etcd_err("TLS configuration", e))?;
            } else if tls_wanted {
                bail!(
                    "--cacert/--cert/--key given but endpoint {raw} is plain http: use https://{}",
                    url.trim_start_matches("http://")
                );
            }
            let target = Target { url: &url, scheme_given: raw.contains("://"), options: o };
            let ch = match ep.connect().await {
                Ok(ch) => ch,
                Err(e) => {
                    last = Some(target.error(&e));
                    continue;
                }
            };
            let mut kv = KvClient::new(ch).max_decoding_message_size(64 * 1024 * 1024);
            // TLS client-certificate checks and a wrong scheme show only at the first request:
            // one cheap read proves the endpoint speaks etcd's API. An answer that is an etcd
            // error (e.g. permission denied) still proves that.
            let probe = RangeRequest { key: b"\0".to_vec(), count_only: true, ..Default::default() };
            match kv.range(probe).await {
                Err(status) if is_connection_failure(&status) => last = Some(target.error(&status)),
                _ => return Ok(Self { kv }),
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
            .map_err(|e| rpc_err("range", &e))?
            .into_inner();
        Ok(r.kvs.into_iter().next())
    }

    /// Writes one key.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.kv
            .put(PutRequest { key: key.to_vec(), value: value.to_vec(), ..Default::default() })
            .await
            .map_err(|e| rpc_err("put", &e))?;
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
                Err(e) => return Err(rpc_err("range", &e)),
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
            .map_err(|e| rpc_err("range", &e))?
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

/// Usage check of `--etcd` values, before anything is contacted: at least one, each
/// `HOST:PORT` or an `http://` / `https://` URL.
pub fn check_endpoints(endpoints: &[String]) -> Result<()> {
    if endpoints.is_empty() {
        bail!("--etcd is required: etcd's client URL, e.g. --etcd https://127.0.0.1:2379 (or ENVELOPE_ETCD)");
    }
    for raw in endpoints {
        let raw = raw.as_str();
        if raw.trim().is_empty() {
            bail!("--etcd has an empty endpoint");
        }
        if let Some((scheme, _)) = raw.split_once("://")
            && scheme != "http"
            && scheme != "https"
        {
            bail!(
                "--etcd {raw}: {scheme}:// is not supported: give https://HOST:PORT (TLS, with --cacert) or \
                 http://HOST:PORT"
            );
        }
        let url = if raw.contains("://") { raw.to_owned() } else { format!("http://{raw}") };
        match url.parse::<http::Uri>() {
            Ok(u) if u.host().is_some_and(|h| !h.is_empty()) => {}
            _ => bail!("--etcd {raw:?} is not HOST:PORT or a URL like https://127.0.0.1:2379"),
        }
    }
    Ok(())
}

/// Whether an RPC failed because the connection did not work (transport, TLS, timeout), as
/// opposed to an answer from etcd.
fn is_connection_failure(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)
        // An HTTP answer that is not gRPC (a proxy, a web server).
        || status.message().starts_with("grpc-status header missing")
        || causes(status).iter().any(|c| c.is::<tonic::transport::Error>() || c.is::<std::io::Error>())
}

/// An endpoint being connected to, for error messages.
struct Target<'a> {
    url: &'a str,
    /// Whether `--etcd` had a scheme (else http or https was assumed from the TLS flags).
    scheme_given: bool,
    options: &'a EtcdOptions,
}

impl Target<'_> {
    fn error(&self, e: &(dyn std::error::Error + 'static)) -> anyhow::Error {
        let symptom = Symptom::of(e);
        let https = self.url.starts_with("https://");
        let mut msg = format!("etcd: cannot connect to {}: {}", self.url, self.explain(&symptom, https));
        if !self.scheme_given && matches!(symptom, Symptom::Closed | Symptom::NotTls | Symptom::NotGrpc) {
            let (scheme, flags) =
                if https { ("https", "--cacert was given") } else { ("http", "no --cacert was given") };
            msg.push_str(&format!(" (--etcd had no scheme: {scheme}:// was assumed because {flags})"));
        }
        anyhow!(msg)
    }

    fn host_port(&self) -> &str {
        self.url.split_once("://").map(|(_, r)| r.trim_end_matches('/')).unwrap_or(self.url)
    }

    /// "cause; hint".
    fn explain(&self, s: &Symptom, https: bool) -> String {
        let hp = self.host_port();
        let o = self.options;
        let file = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let no_port = !hp.rsplit_once(':').is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        match s {
            Symptom::Refused if no_port => format!(
                "connection refused; the address has no port, so {} was used: give etcd's client port (usually 2379)",
                if https { 443 } else { 80 }
            ),
            Symptom::Refused => "connection refused: nothing listens there; check the host and port (etcd's client \
                port is usually 2379)"
                .to_owned(),
            Symptom::Timeout => "no answer in time; check the host, port and firewall (etcd's client port is usually \
                2379), or raise --etcd-timeout"
                .to_owned(),
            Symptom::Dns(d) => format!("cannot resolve the host name ({d}); check the address"),
            Symptom::NotTls if https => format!(
                "the TLS handshake failed, the server does not speak TLS; it probably serves plain http: use \
                 --etcd http://{hp} (without --cacert/--cert/--key)"
            ),
            Symptom::UnknownIssuer => format!(
                "etcd's certificate is not signed by the CA in --cacert {}; give the CA that signed etcd's serving \
                 certificate (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)",
                file(&o.ca)
            ),
            Symptom::NameMismatch => format!(
                "etcd's certificate is not valid for the host in {}; connect with a name or IP address the \
                 certificate lists (kubeadm: 127.0.0.1 or the node's address)",
                self.url
            ),
            Symptom::Expired => "etcd's certificate has expired or is not valid yet; renew it, or check this \
                machine's clock"
                .to_owned(),
            Symptom::BadServerCert(what) => format!("etcd's certificate was refused ({what}); check --cacert"),
            Symptom::Alert(alert) if o.cert.is_none() => format!(
                "etcd refused the TLS connection (alert {alert}): it requires a client certificate; give --cert and \
                 --key (kubeadm: /etc/kubernetes/pki/apiserver-etcd-client.crt and .key)"
            ),
            Symptom::Alert(alert) => format!(
                "etcd refused the client certificate --cert {} (alert {alert}); give one signed by a CA etcd trusts \
                 (kubeadm: /etc/kubernetes/pki/apiserver-etcd-client.crt and .key)",
                file(&o.cert)
            ),
            Symptom::Closed | Symptom::NotTls if !https => format!(
                "the server closed the connection at once; it probably serves TLS: use --etcd https://{hp} with \
                 --cacert (and --cert/--key for a client certificate)"
            ),
            Symptom::Closed if o.cert.is_none() => "etcd closed the connection after the TLS handshake; it \
                probably requires a client certificate: give --cert and --key (kubeadm: \
                /etc/kubernetes/pki/apiserver-etcd-client.crt and .key)"
                .to_owned(),
            Symptom::Closed => format!(
                "etcd closed the connection after the TLS handshake; it probably refused the client certificate \
                 --cert {}: give one signed by a CA etcd trusts",
                file(&o.cert)
            ),
            Symptom::NotGrpc | Symptom::NotTls => "the server does not speak etcd's gRPC API; is this etcd's client \
                port (usually 2379), not its peer (2380) or metrics port?"
                .to_owned(),
            Symptom::Other(detail) => detail.clone(),
        }
    }
}

/// What went wrong with a connection, from an error's chain of causes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Symptom {
    Refused,
    Timeout,
    Dns(String),
    /// The peer closed the connection (EOF, reset, broken pipe) after it was opened.
    Closed,
    /// The TLS handshake got something that is not TLS.
    NotTls,
    /// HTTP/2 or gRPC framing errors: not a gRPC server.
    NotGrpc,
    UnknownIssuer,
    NameMismatch,
    Expired,
    BadServerCert(String),
    /// The server sent a TLS alert (it refused our client certificate or the handshake).
    Alert(String),
    Other(String),
}

impl Symptom {
    fn of(e: &(dyn std::error::Error + 'static)) -> Self {
        use rustls::CertificateError as C;
        let chain = causes(e);
        for c in &chain {
            if let Some(r) = c.downcast_ref::<rustls::Error>() {
                return match r {
                    // BadSignature: a CA of the same name (kubeadm names every etcd CA "etcd-ca").
                    rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => Symptom::UnknownIssuer,
                    rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                        Symptom::NameMismatch
                    }
                    rustls::Error::InvalidCertificate(
                        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
                    ) => Symptom::Expired,
                    rustls::Error::InvalidCertificate(other) => Symptom::BadServerCert(format!("{other:?}")),
                    rustls::Error::AlertReceived(a) => Symptom::Alert(format!("{a:?}")),
                    rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => Symptom::NotTls,
                    other => Symptom::Other(format!("TLS: {other}")),
                };
            }
        }
        let text = dedup_chain(&chain);
        let lower = text.to_ascii_lowercase();
        // tonic wraps what fails while connecting — TCP, then the TLS handshake — in a
        // ConnectError, and nothing after it. A peer that closes (EOF, or a reset when it left our
        // ClientHello unread: a matter of timing) before the TLS handshake is done does not speak
        // TLS; one that closes later refused what came after it (e.g. no client certificate).
        let in_connect = chain.iter().any(|c| c.is::<tonic::ConnectError>());
        let closed = if in_connect { Symptom::NotTls } else { Symptom::Closed };
        for c in &chain {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind as K;
                match io.kind() {
                    K::ConnectionRefused => return Symptom::Refused,
                    K::TimedOut => return Symptom::Timeout,
                    K::UnexpectedEof if lower.contains("tls handshake") => return Symptom::NotTls,
                    K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => return closed,
                    _ => {}
                }
            }
        }
        if let Some(i) = lower.find("received fatal alert: ") {
            let alert = text.get(i + "received fatal alert: ".len()..).unwrap_or_default();
            Symptom::Alert(alert.split([':', ' ']).next().unwrap_or_default().to_owned())
        } else if lower.contains("connection refused") {
            Symptom::Refused
        } else if lower.contains("tls handshake eof") || lower.contains("corrupt message") {
            Symptom::NotTls
        } else if lower.contains("timed out") || lower.contains("timeout expired") || lower.contains("deadline") {
            Symptom::Timeout
        } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
            Symptom::Dns(text)
        } else if lower.contains("connection closed")
            || lower.contains("broken pipe")
            || lower.contains("reset by peer")
            // hyper: the connection ended before the request could be sent on it (the peer closed
            // it right after the handshake; which of these messages comes is a matter of timing).
            || lower.contains("connection was not ready")
        {
            closed
        } else if lower.contains("http2")
            || lower.contains("frame")
            || lower.contains("protocol error")
            || lower.contains("grpc-status header missing")
        {
            Symptom::NotGrpc
        } else {
            Symptom::Other(text)
        }
    }
}

/// `e` and its sources; an `io::Error` wrapping another error contributes that error too (its
/// own `source()` skips it).
fn causes<'a>(e: &'a (dyn std::error::Error + 'static)) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out: Vec<&'a (dyn std::error::Error + 'static)> = Vec::new();
    let mut cur = Some(e);
    while let Some(c) = cur {
        out.push(c);
        if let Some(inner) = c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            let inner: &'a (dyn std::error::Error + 'static) = inner;
            out.push(inner);
            cur = inner.source();
        } else {
            cur = c.source();
        }
        if out.len() > 16 {
            break;
        }
    }
    out
}

/// The messages of `chain` joined with ": ", each said once (sources often repeat their
/// wrapper's text, as in "tls handshake eof: tls handshake eof").
fn dedup_chain(chain: &[&(dyn std::error::Error + 'static)]) -> String {
    let mut s = String::new();
    for c in chain {
        let m = match c.downcast_ref::<tonic::Status>() {
            Some(status) => status.message().to_owned(),
            None => c.to_string(),
        };
        if m.is_empty() || s.contains(&m) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&m);
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

    #[test]
    fn endpoint_syntax() {
        let check = |e: &[&str]| check_endpoints(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(check(&["https://10.0.0.1:2379", "10.0.0.2:2379", "http://localhost:2379", "etcd-0"]).is_ok());
        assert!(check(&[]).unwrap_err().to_string().contains("--etcd is required"));
        assert!(check(&["unix:///run/etcd.sock"]).unwrap_err().to_string().contains("unix:// is not supported"));
        assert!(check(&["https://"]).is_err());
        assert!(check(&[" "]).is_err());
        assert!(check(&["a b:2379"]).is_err());
    }

    #[test]
    fn symptoms_from_error_text() {
        let of = |m: &str| Symptom::of(&std::io::Error::other(m.to_owned()));
        assert_eq!(of("received fatal alert: BadCertificate"), Symptom::Alert("BadCertificate".into()));
        assert_eq!(of("tls handshake eof"), Symptom::NotTls);
        assert_eq!(of("grpc-status header missing, mapped from HTTP status code 404"), Symptom::NotGrpc);
        assert_eq!(of("operation was canceled: connection closed"), Symptom::Closed);
        assert_eq!(of("operation was canceled: transport error: connection was not ready"), Symptom::Closed);
        // Closed while connecting (TCP or the TLS handshake, wrapped by tonic) or after it.
        let reset = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(Symptom::of(&reset()), Symptom::Closed);
        assert_eq!(Symptom::of(&tonic::ConnectError(Box::new(reset()))), Symptom::NotTls);
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Symptom::of(&io), Symptom::Refused);
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(Symptom::of(&tls), Symptom::UnknownIssuer);
        assert_eq!(dedup_chain(&causes(&std::io::Error::other("x"))), "x");
    }
}
