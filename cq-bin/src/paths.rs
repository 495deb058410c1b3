//! Default locations.

use std::path::PathBuf;

/// The server's default state directory: `/var/lib/cq` for root, otherwise
/// `$XDG_STATE_HOME/cq` or `~/.local/state/cq`.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/cq");
    }
    user_state_dir()
}

/// A user's own state directory, the client's (root's too: `/var/lib/cq` is the server's):
/// `$XDG_STATE_HOME/cq` or `~/.local/state/cq`.
pub fn user_state_dir() -> PathBuf {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(state).join("cq");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/cq")
}

/// The server's default Unix socket: `/run/cq/cq.sock` for root, otherwise
/// `$XDG_RUNTIME_DIR/cq/cq.sock` (or `cq.sock` in the user's state directory).
pub fn default_socket() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/cq/cq.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("cq/cq.sock"),
        None => user_state_dir().join("cq.sock"),
    }
}

/// The local server's socket a client uses when it is given no host: this user's own
/// server's, else root's; `None` when neither is there. `$XDG_RUNTIME_DIR` counts only
/// when it is this user's own private directory (mode 0700), as the XDG rules say: an
/// inherited one (`su` without `-`, `sudo -E`) may be someone else's.
pub fn local_socket() -> Option<PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut candidates = Vec::new();
    let me = nix::unistd::getuid().as_raw();
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty())
        && std::fs::metadata(&dir).is_ok_and(|m| m.uid() == me && m.mode() & 0o077 == 0)
    {
        candidates.push(PathBuf::from(dir).join("cq/cq.sock"));
    }
    candidates.push(PathBuf::from("/run/cq/cq.sock"));
    candidates
        .into_iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()))
}
