//! The plugin's Unix socket: safe creation, stale-file handling, permissions, abstract names,
//! and removal on shutdown only if the file is still ours; [`connect`] is the client side.

use std::fs;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

/// Where and how to create the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    /// A filesystem path, or `@name` for a Linux abstract socket.
    pub path: String,
    /// File mode of the socket (ignored for abstract sockets). Default 0600.
    pub mode: u32,
    /// Group to own the socket file, if any.
    pub group: Option<String>,
}

impl SocketSpec {
    /// A spec with the default mode 0600 and no group.
    pub fn new(path: impl Into<String>) -> Self {
        Self { path: path.into(), mode: 0o600, group: None }
    }

    /// True for `@name` abstract sockets.
    pub fn is_abstract(&self) -> bool {
        self.path.starts_with('@')
    }

    /// The endpoint to put in kube-apiserver's EncryptionConfiguration.
    pub fn endpoint(&self) -> String {
        if self.is_abstract() { format!("unix:///{}", self.path) } else { format!("unix://{}", self.path) }
    }
}

/// Socket set-up failures, each with a clear message.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The path is relative or empty.
    #[error("socket path {0:?} must be absolute (or @name for an abstract socket)")]
    NotAbsolute(String),
    /// A live process already answers on the socket.
    #[error("socket {0} is in use by a running process; refusing to take it over")]
    InUse(String),
    /// The path exists but is not a socket.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(String),
    /// The group does not exist.
    #[error("group {0:?} does not exist")]
    UnknownGroup(String),
    /// The socket's directory keeps the socket's group out, and it is not ours to change.
    #[error(
        "members of group {group} cannot reach the socket: {dir} is mode {mode:04o} owned by uid {uid} gid {gid}; \
         run `chgrp {group} {dir} && chmod g+x {dir}`, or put the socket in a directory of its own"
    )]
    DirectoryClosed {
        /// The socket group.
        group: String,
        /// The parent directory.
        dir: String,
        /// Its mode.
        mode: u32,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// Any other I/O failure, with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: io::Error,
    },
}

fn ioe(context: impl Into<String>) -> impl FnOnce(io::Error) -> SocketError {
    let context = context.into();
    move |source| SocketError::Io { context, source }
}

/// A bound socket. Dropping it does not unlink; call [`BoundSocket::cleanup`].
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener (std, non-blocking) — convert with `tokio::net::UnixListener::from_std`.
    pub listener: StdUnixListener,
    spec: SocketSpec,
    identity: Option<(u64, u64)>,
}

impl BoundSocket {
    /// The spec it was bound with.
    pub fn spec(&self) -> &SocketSpec {
        &self.spec
    }

    /// Removes the socket file if it is still the one we created (same device and inode), so a
    /// newer plugin's socket at the same path is never removed by an old one shutting down.
    pub fn cleanup(&self) -> bool {
        let Some((dev, ino)) = self.identity else { return false };
        let path = Path::new(&self.spec.path);
        match fs::symlink_metadata(path) {
            Ok(m) if m.dev() == dev && m.ino() == ino => fs::remove_file(path).is_ok(),
            _ => false,
        }
    }
}

/// Creates and binds the socket described by `spec`.
pub fn bind(spec: &SocketSpec) -> Result<BoundSocket, SocketError> {
    if spec.is_abstract() {
        let name = &spec.path[1..];
        let addr =
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(ioe(format!("abstract socket {}", spec.path)))?;
        if StdUnixStream::connect_addr(&addr).is_ok() {
            return Err(SocketError::InUse(spec.path.clone()));
        }
        let listener =
            StdUnixListener::bind_addr(&addr).map_err(ioe(format!("cannot bind abstract socket {}", spec.path)))?;
        listener.set_nonblocking(true).map_err(ioe("set_nonblocking"))?;
        return Ok(BoundSocket { listener, spec: spec.clone(), identity: None });
    }
    let path = PathBuf::from(&spec.path);
    if spec.path.is_empty() || !path.is_absolute() {
        return Err(SocketError::NotAbsolute(spec.path.clone()));
    }
    let gid = match &spec.group {
        Some(g) => Some(
            nix::unistd::Group::from_name(g).ok().flatten().ok_or_else(|| SocketError::UnknownGroup(g.clone()))?.gid,
        ),
        None => None,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(ioe(format!("cannot create directory {}", dir.display())))?;
        }
        // The directory must let the socket's group in, or the group mode of the socket itself
        // would be useless (members would get EACCES).
        if let (Some(gid), Some(group)) = (gid, &spec.group) {
            open_directory_to_group(dir, gid.as_raw(), group)?;
        }
    }
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => {
            if StdUnixStream::connect(&path).is_ok() {
                return Err(SocketError::InUse(spec.path.clone()));
            }
            tracing::info!(path = %spec.path, "removing stale socket (nothing answers on it)");
            fs::remove_file(&path).map_err(ioe(format!("cannot remove stale socket {}", spec.path)))?;
        }
        Ok(_) => return Err(SocketError::NotASocket(spec.path.clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ioe(format!("cannot inspect {}", spec.path))(e)),
    }
    // Create the socket with no group/other bits at all, so there is no window in which it is
    // more open than requested; the final mode is applied right after.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = StdUnixListener::bind(&path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(ioe(format!("cannot bind {}", spec.path)))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(&path, None, Some(gid.as_raw()))
            .map_err(ioe(format!("cannot chgrp {}", spec.path)))?;
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(spec.mode))
        .map_err(ioe(format!("cannot chmod {}", spec.path)))?;
    listener.set_nonblocking(true).map_err(ioe("set_nonblocking"))?;
    let m = fs::symlink_metadata(&path).map_err(ioe(format!("cannot stat {}", spec.path)))?;
    Ok(BoundSocket { listener, spec: spec.clone(), identity: Some((m.dev(), m.ino())) })
}

/// Connects a gRPC channel to a plugin socket: a path, or `@name` for an abstract socket (tonic
/// has no URI for those, so they go through a connector).
pub async fn connect(socket: &str) -> Result<Channel, tonic::transport::Error> {
    if let Some(name) = socket.strip_prefix('@') {
        let name = name.to_string();
        return Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let name = name.clone();
                async move {
                    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
                    let s = StdUnixStream::connect_addr(&addr)?;
                    s.set_nonblocking(true)?;
                    Ok::<_, io::Error>(TokioIo::new(tokio::net::UnixStream::from_std(s)?))
                }
            }))
            .await;
    }
    Endpoint::from_shared(format!("unix://{socket}"))?.connect().await
}

/// Makes sure members of group `gid` can search `dir`. A directory that is ours (owned by this
/// user) and holds nothing but sockets — a socket directory like `/run/envelope`, possibly made
/// by an earlier run — is given that group and `g+x`; any other directory that keeps the group
/// out is refused with what to run, rather than silently leaving the socket unreachable.
fn open_directory_to_group(dir: &Path, gid: u32, group: &str) -> Result<(), SocketError> {
    let m = fs::metadata(dir).map_err(ioe(format!("cannot inspect {}", dir.display())))?;
    let mode = m.permissions().mode() & 0o7777;
    let reachable = mode & 0o001 != 0 || (m.gid() == gid && mode & 0o010 != 0);
    if reachable {
        return Ok(());
    }
    let ours = m.uid() == nix::unistd::geteuid().as_raw();
    let only_sockets = fs::read_dir(dir)
        .map_err(ioe(format!("cannot list {}", dir.display())))?
        .all(|e| e.and_then(|e| e.file_type()).is_ok_and(|t| t.is_socket()));
    if !(ours && only_sockets) {
        return Err(SocketError::DirectoryClosed {
            group: group.to_string(),
            dir: dir.display().to_string(),
            mode,
            uid: m.uid(),
            gid: m.gid(),
        });
    }
    std::os::unix::fs::chown(dir, None, Some(gid)).map_err(ioe(format!("cannot chgrp {}", dir.display())))?;
    let opened = (mode | 0o010) & !0o002;
    fs::set_permissions(dir, fs::Permissions::from_mode(opened))
        .map_err(ioe(format!("cannot chmod {}", dir.display())))?;
    tracing::info!(dir = %dir.display(), group, mode = format!("{opened:04o}"), "opened the socket directory to the socket group");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_parent_with_mode_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/dir/kms.sock");
        let spec = SocketSpec::new(p.to_str().unwrap());
        let b = bind(&spec).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(b.cleanup());
        assert!(!p.exists());
    }

    #[test]
    fn custom_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kms.sock");
        let spec = SocketSpec { mode: 0o660, ..SocketSpec::new(p.to_str().unwrap()) };
        let _b = bind(&spec).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o660);
    }

    #[test]
    fn group_ownership_is_applied() {
        // The process's own primary group is always a group it may chown to.
        let gid = nix::unistd::getegid();
        let group = nix::unistd::Group::from_gid(gid).unwrap().expect("primary group has a name");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kms.sock");
        let spec = SocketSpec { mode: 0o660, group: Some(group.name.clone()), ..SocketSpec::new(p.to_str().unwrap()) };
        let _b = bind(&spec).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&p).unwrap().gid(), gid.as_raw());
        let bad = SocketSpec {
            group: Some("no-such-group-envelope".into()),
            ..SocketSpec::new(d.path().join("x.sock").to_str().unwrap())
        };
        assert!(matches!(bind(&bad), Err(SocketError::UnknownGroup(_))));
    }

    fn own_group() -> (nix::unistd::Gid, String) {
        let gid = nix::unistd::getegid();
        (gid, nix::unistd::Group::from_gid(gid).unwrap().expect("primary group has a name").name)
    }

    #[test]
    fn a_socket_directory_left_closed_by_an_earlier_run_is_opened_to_the_group() {
        // As a first run without --socket-group leaves it: 0700 (here), no group access.
        let (gid, group) = own_group();
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("run-envelope");
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        drop(bind(&SocketSpec::new(dir.join("kms.sock").to_str().unwrap())).unwrap()); // a stale socket stays
        let spec =
            SocketSpec { mode: 0o660, group: Some(group), ..SocketSpec::new(dir.join("kms.sock").to_str().unwrap()) };
        let _b = bind(&spec).unwrap();
        let m = fs::metadata(&dir).unwrap();
        assert_eq!((m.gid(), m.permissions().mode() & 0o777), (gid.as_raw(), 0o710));
    }

    #[test]
    fn a_closed_directory_that_is_not_only_sockets_is_refused_with_the_fix() {
        let (_, group) = own_group();
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        fs::write(dir.join("keystore.db"), b"x").unwrap();
        let spec = SocketSpec {
            mode: 0o660,
            group: Some(group.clone()),
            ..SocketSpec::new(dir.join("kms.sock").to_str().unwrap())
        };
        let e = bind(&spec).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SocketError::DirectoryClosed { .. }), "{msg}");
        assert!(msg.contains(&format!("chgrp {group}")) && msg.contains("chmod g+x"), "{msg}");
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "left as it was");
        assert!(!dir.join("kms.sock").exists());
        // A directory others may search needs nothing.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let _b = bind(&spec).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn stale_socket_is_replaced_live_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kms.sock");
        let spec = SocketSpec::new(p.to_str().unwrap());
        {
            // A listener that is dropped leaves a stale socket file behind.
            let _l = StdUnixListener::bind(&p).unwrap();
        }
        assert!(p.exists());
        let live = bind(&spec).unwrap();
        assert!(matches!(bind(&spec), Err(SocketError::InUse(_))));
        drop(live);
    }

    #[test]
    fn refuses_regular_file_and_relative_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("file");
        fs::write(&p, b"x").unwrap();
        assert!(matches!(bind(&SocketSpec::new(p.to_str().unwrap())), Err(SocketError::NotASocket(_))));
        assert!(p.exists());
        assert!(matches!(bind(&SocketSpec::new("relative.sock")), Err(SocketError::NotAbsolute(_))));
    }

    #[test]
    fn cleanup_leaves_a_replaced_socket_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kms.sock");
        let spec = SocketSpec::new(p.to_str().unwrap());
        let old = bind(&spec).unwrap();
        fs::remove_file(&p).unwrap();
        let _new = bind(&spec).unwrap();
        assert!(!old.cleanup());
        assert!(p.exists());
    }

    #[test]
    fn abstract_socket_binds_and_detects_live_owner() {
        let name = format!("@envelope-test-{}", std::process::id());
        let spec = SocketSpec::new(name.clone());
        let b = bind(&spec).unwrap();
        assert!(matches!(bind(&spec), Err(SocketError::InUse(_))));
        assert_eq!(spec.endpoint(), format!("unix:///{name}"));
        assert!(!b.cleanup());
    }
}
