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
