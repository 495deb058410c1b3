//! cq transport over a Unix socket: one host, no credential service, no certificates.
//!
//! The kernel records who made each connection (`SO_PEERCRED`: uid, gid, pid at `connect`),
//! and the peer cannot forge it; [`UnixListener`] and [`UnixConnector`] put it in
//! [`PeerInfo::unix`], for an authenticator that trusts it (`cq_auth::PeerCredAuthenticator`
//! on the server, `cq_auth::PeerCredServerAuthenticator` on the client). Who may connect at
//! all is the socket file's permissions; who may submit is the server's policy.
//!
//! # Layout
//!
//! One file: [`UnixListener`] (server side) and [`UnixConnector`] (client side).

#![warn(missing_docs, unreachable_pub)]

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use cq_core::UnixPeer;
use cq_core::transport::{Connector, Listener, PeerInfo, PendingConnection, TransportError};
use tokio::net::UnixStream;

/// Accepts connections on a Unix socket; removes the socket file when dropped (if it is
/// still the one it made).
#[derive(Debug)]
pub struct UnixListener {
    inner: tokio::net::UnixListener,
    path: PathBuf,
    /// The socket file's device and inode, to remove only that file.
    made: (u64, u64),
}

impl UnixListener {
    /// Binds the socket `path` with `mode` (e.g. 0o666: anybody on this host may connect,
    /// and the server's policy says who may submit). A socket file left by a server that is
    /// gone is replaced; one a live server answers on is not.
    ///
    /// The socket's directory must be one only this process's user (or root) can change:
    /// the socket is found, made and given its mode by path, which someone who may rename
    /// entries there could point elsewhere. The caller checks that.
    ///
    /// # Errors
    ///
    /// The operating system's error; [`io::ErrorKind::AddrInUse`] when a server answers
    /// there; [`io::ErrorKind::AlreadyExists`] when something other than a socket is there.
    pub fn bind(path: &Path, mode: u32) -> io::Result<Self> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("a server already answers on {}", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let inner = tokio::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self {
            inner,
            path: path.to_owned(),
            made: (meta.dev(), meta.ino()),
        })
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        // Only the socket it made: whatever is there now may be something else.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.made) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A connection accepted on a Unix socket.
#[derive(Debug)]
pub struct UnixPending {
    stream: UnixStream,
    /// The peer's uid, read at accept: the server limits connections per local user.
    uid: Option<u32>,
}

#[async_trait]
impl Listener for UnixListener {
    type Pending = UnixPending;

    async fn accept(&self) -> io::Result<UnixPending> {
        let (stream, _) = self.inner.accept().await?;
        let uid = stream.peer_cred().ok().map(|cred| cred.uid());
        Ok(UnixPending { stream, uid })
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }
}

#[async_trait]
impl PendingConnection for UnixPending {
    type Stream = UnixStream;

    async fn establish(self) -> Result<(UnixStream, PeerInfo), TransportError> {
        let peer = peer_of(&self.stream).map_err(|e| TransportError::Handshake {
            peer: "local".to_owned(),
            reason: format!("cannot tell who connected: {e}"),
        })?;
        Ok((self.stream, PeerInfo::unix(peer)))
    }

    fn peer_uid(&self) -> Option<u32> {
        self.uid
    }
}

/// Connects to a server's Unix socket.
#[derive(Clone, Debug)]
pub struct UnixConnector {
    path: PathBuf,
    /// The uids the process on the socket may run as; any when empty.
    uids: Vec<u32>,
}

impl UnixConnector {
    /// A connector for the socket `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            uids: Vec::new(),
        }
    }

    /// Refuses a socket whose process does not run as one of `uids`, before anything is
    /// sent on it: a socket another user put in the way learns nothing of the request.
    #[must_use]
    pub fn expect_uids(mut self, uids: Vec<u32>) -> Self {
        self.uids = uids;
        self
    }
}

#[async_trait]
impl Connector for UnixConnector {
    type Stream = UnixStream;

    async fn connect(&self) -> Result<(UnixStream, PeerInfo), TransportError> {
        let failed = |source| TransportError::Connect {
            server: self.server_name(),
            source,
        };
        let stream = UnixStream::connect(&self.path).await.map_err(failed)?;
        let peer = peer_of(&stream).map_err(failed)?;
        if !self.uids.is_empty() && !self.uids.contains(&peer.uid) {
            return Err(TransportError::Handshake {
                peer: self.server_name(),
                reason: format!(
                    "the process answering on the socket runs as uid {}, not as the server's (expected {:?}; see --server-uid): nothing was sent",
                    peer.uid, self.uids
                ),
            });
        }
        Ok((stream, PeerInfo::unix(peer)))
    }

    fn server_name(&self) -> String {
        format!("unix:{}", self.path.display())
    }
}

fn peer_of(stream: &UnixStream) -> io::Result<UnixPeer> {
    let cred = stream.peer_cred()?;
    Ok(UnixPeer::new(cred.uid(), cred.gid(), cred.pid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_end_learns_who_the_other_is_and_a_live_socket_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.sock");
        let listener = UnixListener::bind(&path, 0o666).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let taken = UnixListener::bind(&path, 0o666).unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);
        let connector = UnixConnector::new(&path);
        let (client, server) = tokio::join!(connector.connect(), async {
            listener.accept().await.unwrap().establish().await
        });
        let me = std::process::id() as i32;
        let (_, server_side) = server.unwrap();
        let (_, client_side) = client.unwrap();
        for side in [server_side, client_side] {
            let unix = side.unix.expect("the kernel's word");
            assert_eq!(unix.pid, Some(me));
            assert_eq!(unix.uid, nix_uid());
        }
        drop(listener);
        assert!(!path.exists(), "the socket file goes with the listener");
        // A stale socket (nobody answers) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        UnixListener::bind(&path, 0o600).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert_eq!(
            UnixListener::bind(&file, 0o666).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
    }

    #[test]
    fn the_listener_removes_only_the_socket_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let listener = UnixListener::bind(&path, 0o666).unwrap();
        // Someone swaps the socket for another file while the server runs.
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        std::fs::write(&path, "not the server's").unwrap();
        drop(listener);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not the server's");
    }

    fn nix_uid() -> u32 {
        std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
    }
}
