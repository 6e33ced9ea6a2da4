//! Ports and sockets for tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago (for programs that must be told a port;
/// in-process servers bind 127.0.0.1:0 instead).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`; panics with `what` and the
/// output of `log` after `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on port {port}: {}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary directory and the path of a socket inside it (not created); the socket goes away
/// with the directory.
pub fn temp_socket(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

/// A TCP endpoint on 127.0.0.1 that accepts connections, reads nothing and never answers: a
/// remote end that hangs. Returns its port; it lives as long as the runtime.
pub async fn silent_endpoint() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    port
}
