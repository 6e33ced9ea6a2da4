//! A real etcd server for tests on loopback ports with a temporary data directory, optionally
//! with TLS and client-certificate auth (certificates made with `openssl`). The binary is
//! `$ENVELOPE_ETCD_BIN`, else Debian's `/usr/bin/etcd` (package etcd-server, installed by
//! scripts/test).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd (killed on drop).
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    pub tls: Option<TlsFiles>,
}

/// What a client needs to reach a TLS etcd.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn etcd_bin() -> String {
    let b = std::env::var("ENVELOPE_ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".to_string());
    assert!(
        Path::new(&b).exists(),
        "etcd not found at {b}: run scripts/test (it installs etcd-server) or set ENVELOPE_ETCD_BIN"
    );
    b
}

/// Runs openssl in `dir` with `args` split at white space (none of them contains any).
fn openssl(args: &str, dir: &Path) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = Command::new("openssl").args(&args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// openssl req's options for a new P-256 key, unencrypted.
const NEW_EC_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
pub fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf, TlsFiles) {
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(&format!("req -x509 {NEW_EC_KEY} -keyout ca.key -out ca.crt -days 2 -subj /CN=test-etcd-ca"), dir);
    for name in ["server", "client"] {
        openssl(&format!("req {NEW_EC_KEY} -keyout {name}.key -out {name}.csr -subj /CN={name}"), dir);
        openssl(
            &format!(
                "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 2 \
                 -extfile san.cnf"
            ),
            dir,
        );
    }
    let tls =
        TlsFiles { ca: dir.join("ca.crt"), client_cert: dir.join("client.crt"), client_key: dir.join("client.key") };
    (dir.join("server.crt"), dir.join("server.key"), dir.join("ca.crt"), tls)
}

impl Etcd {
    /// A plain-HTTP etcd.
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// An etcd that requires TLS and a client certificate.
    pub fn start_tls() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let client_port = crate::net::free_port();
        let peer_port = crate::net::free_port();
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&endpoint)
            .arg("--advertise-client-urls")
            .arg(&endpoint)
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{peer_port}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{peer_port}"))
            .arg("--initial-cluster")
            .arg(format!("test=http://127.0.0.1:{peer_port}"))
            .arg("--log-level")
            .arg("error")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap());
        let mut files = None;
        if tls {
            let (cert, key, ca, t) = make_certs(dir.path());
            cmd.arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--client-cert-auth");
            files = Some(t);
        }
        let child = cmd.spawn().expect("spawn etcd");
        let e = Etcd { child, endpoint, dir, tls: files };
        e.wait_ready();
        e
    }

    fn wait_ready(&self) {
        let addr = self.endpoint.rsplit("//").next().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The port answers a little before the KV API is ready.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Extra CLI arguments for `envelope inspect/decrypt` to reach this etcd.
    pub fn args(&self) -> Vec<String> {
        let mut v = vec!["--etcd".to_string(), self.endpoint.clone()];
        if let Some(t) = &self.tls {
            v.extend([
                "--cacert".to_string(),
                t.ca.to_string_lossy().into_owned(),
                "--cert".to_string(),
                t.client_cert.to_string_lossy().into_owned(),
                "--key".to_string(),
                t.client_key.to_string_lossy().into_owned(),
            ]);
        }
        v
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
