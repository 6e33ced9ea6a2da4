//! A [`Plugin`] served on a Unix socket in a temporary directory, and gRPC clients of it.

use std::path::{Path, PathBuf};

use envelope_plugin::{KeyBackend, Plugin};
use envelope_proto::v1beta1::key_management_service_client::KeyManagementServiceClient as V1Client;
use envelope_proto::v2::key_management_service_client::KeyManagementServiceClient as V2Client;
use tonic::transport::{Channel, Endpoint};

/// A plugin serving on `<tempdir>/kms.sock` until [`OnSocket::stop`] (or drop).
pub struct OnSocket<B: KeyBackend> {
    /// The plugin being served.
    pub plugin: Plugin<B>,
    /// The socket's path.
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    _dir: tempfile::TempDir,
}

/// Serves `plugin` on a fresh socket (call `probe_now` first if the first Status matters).
pub async fn serve<B: KeyBackend>(plugin: Plugin<B>) -> OnSocket<B> {
    let (dir, socket) = crate::net::temp_socket("kms.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = plugin.clone();
    let task = tokio::spawn(async move {
        served
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await
    });
    OnSocket { plugin, socket, stop: Some(tx), task: Some(task), _dir: dir }
}

impl<B: KeyBackend> OnSocket<B> {
    /// A KMS v2 client over a new connection.
    pub async fn v2(&self) -> V2Client<Channel> {
        V2Client::new(channel(&self.socket).await)
    }

    /// A KMS v1beta1 client over a new connection.
    pub async fn v1(&self) -> V1Client<Channel> {
        V1Client::new(channel(&self.socket).await)
    }

    /// Starts the shutdown (in-flight requests get the plugin's grace period).
    pub fn begin_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Starts the shutdown and waits for `serve` to return; its result.
    pub async fn stop(&mut self) -> Result<(), tonic::transport::Error> {
        self.begin_stop();
        match self.task.take() {
            Some(t) => t.await.unwrap(),
            None => Ok(()),
        }
    }
}

/// A gRPC channel to the Unix socket at `path`.
pub async fn channel(path: &Path) -> Channel {
    Endpoint::from_shared(format!("unix://{}", path.display())).unwrap().connect().await.unwrap()
}
