//! Helpers for end-to-end tests: start the real `envelope` binary and talk to its socket.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use envelope_proto::v1beta1::key_management_service_client::KeyManagementServiceClient as V1Client;
use envelope_proto::v2::StatusRequest;
use envelope_proto::v2::key_management_service_client::KeyManagementServiceClient as V2Client;
use envelope_test_support::net::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_envelope");

pub struct RunningPlugin {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub socket: String,
    pub http_port: u16,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl RunningPlugin {
    /// Starts a plugin with its data dir and socket in `dir`.
    pub async fn start(dir: &Path, extra: &[&str]) -> Self {
        let data_dir = dir.join("data");
        let socket = dir.join("kms.sock").to_string_lossy().into_owned();
        Self::start_with(dir, &data_dir, &socket, extra).await
    }

    pub async fn start_with(dir: &Path, data_dir: &Path, socket: &str, extra: &[&str]) -> Self {
        let http_port = free_port();
        let stdout_path = dir.join(format!("stdout-{http_port}.log"));
        let stderr_path = dir.join(format!("stderr-{http_port}.log"));
        let child = Command::new(BIN)
            .arg("plugin")
            .arg("--socket")
            .arg(socket)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--health-interval")
            .arg("200ms")
            .args(extra)
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn envelope");
        let p = RunningPlugin {
            child: Some(child),
            dir: dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            socket: socket.to_string(),
            http_port,
            stdout_path,
            stderr_path,
        };
        p.wait_ready().await;
        p
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = self.v2().await
                && c.status(StatusRequest {}).await.is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!("plugin did not become ready; stderr:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        envelope_plugin::socket::connect(&self.socket).await
    }

    pub async fn v2(&self) -> Result<V2Client<Channel>, tonic::transport::Error> {
        Ok(V2Client::new(self.channel().await?))
    }

    pub async fn v1(&self) -> Result<V1Client<Channel>, tonic::transport::Error> {
        Ok(V1Client::new(self.channel().await?))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("plugin did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// GET a path on the HTTP port; returns (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path).await
    }

    /// Runs `envelope key ...` against this plugin's data dir.
    pub fn key_cmd(&self, args: &[&str]) -> Output {
        key_cmd(&self.data_dir, args)
    }
}

impl Drop for RunningPlugin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn key_cmd(data_dir: &Path, args: &[&str]) -> Output {
    let out =
        Command::new(BIN).arg("key").args(args).arg("--data-dir").arg(data_dir).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "envelope key {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    (status, body)
}
