//! Local accounts: who a job runs as when the server switches to the requester.
//!
//! Everything about a requester's rights comes from this host's account database, looked up
//! by the uid its credential (or certificate) names: the primary group, the supplementary
//! groups (as `initgroups` sets them), the home, the shell, and from the shadow file whether
//! the account is locked or expired. A group id a credential claims is never used.

use std::ffi::CString;
use std::fmt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

/// Where `useradd` reads the first uid of regular (non-system) accounts.
const LOGIN_DEFS: &str = "/etc/login.defs";

/// The first regular uid when `/etc/login.defs` does not say.
pub const DEFAULT_FIRST_REGULAR_UID: u32 = 1000;

/// Shells that mean "no logins": accounts with one are service accounts.
const NOLOGIN_SHELLS: &[&str] = &[
    "/usr/sbin/nologin",
    "/sbin/nologin",
    "/usr/bin/nologin",
    "/bin/false",
    "/usr/bin/false",
];

/// A local user as a job running on its behalf needs it: ids, groups, home, state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// User id.
    pub uid: u32,
    /// Primary group id, from the account database.
    pub gid: u32,
    /// Login name.
    pub name: String,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
    /// Supplementary group ids (including `gid`), as `initgroups` would set them.
    pub groups: Vec<u32>,
    /// Whether the password was locked (`usermod -L`, `passwd -l`).
    pub locked: bool,
    /// Whether the account expired (`usermod -e`, `chage -E`).
    pub expired: bool,
}

/// Why an account cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The uid has no entry in the user database of this host.
    #[error("uid {0} has no account on the server")]
    NoSuchUid(u32),
    /// The user database could not be read.
    #[error("cannot look up uid {uid}: {reason}")]
    Lookup {
        /// The uid.
        uid: u32,
        /// Why.
        reason: String,
    },
}

impl Account {
    /// Looks up `uid` in the user database: its primary group, its supplementary groups, and
    /// (where this process may read the shadow file) whether it is locked or expired.
    ///
    /// # Errors
    ///
    /// [`AccountError::NoSuchUid`] when the uid is unknown here.
    pub fn lookup(uid: u32) -> Result<Self, AccountError> {
        let lookup = |e: nix::Error| AccountError::Lookup {
            uid,
            reason: e.desc().to_owned(),
        };
        let user = User::from_uid(Uid::from_raw(uid))
            .map_err(lookup)?
            .ok_or(AccountError::NoSuchUid(uid))?;
        let name = CString::new(user.name.clone()).map_err(|_| AccountError::NoSuchUid(uid))?;
        let mut groups: Vec<u32> = nix::unistd::getgrouplist(&name, user.gid)
            .map_err(lookup)?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let (locked, expired) = shadow_state(&user.name, today());
        Ok(Self {
            uid,
            gid: user.gid.as_raw(),
            name: user.name,
            home: user.dir,
            shell: user.shell,
            groups,
            locked,
            expired,
        })
    }

    /// Names of the account's groups that the group database knows.
    pub fn group_names(&self) -> Vec<String> {
        self.groups
            .iter()
            .filter_map(|&gid| Group::from_gid(Gid::from_raw(gid)).ok().flatten())
            .map(|g| g.name)
            .collect()
    }

    /// Whether this is a service account rather than a person's: a system uid (below
    /// `first_regular_uid`, root aside) or a shell that refuses logins.
    pub fn is_service(&self, first_regular_uid: u32) -> bool {
        (self.uid != 0 && self.uid < first_regular_uid)
            || NOLOGIN_SHELLS.iter().any(|s| self.shell == Path::new(s))
    }

    /// The first uid of regular accounts on this host (`UID_MIN` in `/etc/login.defs`).
    pub fn first_regular_uid() -> u32 {
        std::fs::read_to_string(LOGIN_DEFS)
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let mut words = line.split_whitespace();
                    (words.next() == Some("UID_MIN"))
                        .then(|| words.next()?.parse().ok())
                        .flatten()
                })
            })
            .unwrap_or(DEFAULT_FIRST_REGULAR_UID)
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.uid)
    }
}

/// Days since the Unix epoch, as the shadow file counts.
fn today() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs / 86_400).unwrap_or(i64::MAX)
}

/// (locked, expired) for `name`, from `/etc/shadow` when it can be read (root); both false
/// otherwise.
fn shadow_state(name: &str, today: i64) -> (bool, bool) {
    std::fs::read_to_string("/etc/shadow")
        .ok()
        .and_then(|text| parse_shadow(&text, name, today))
        .unwrap_or((false, false))
}

/// A locked account has a real password hash behind its `!` (an account that never had a
/// password, `!` or `*` alone, is a service account, not a locked one); an expired account
/// has an expiry day that has come.
fn parse_shadow(text: &str, name: &str, today: i64) -> Option<(bool, bool)> {
    let fields: Vec<&str> = text
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&name))?;
    let password = fields.get(1).copied().unwrap_or("");
    let locked = password
        .strip_prefix('!')
        .is_some_and(|rest| rest.trim_start_matches('!').starts_with('$'));
    let expired = fields
        .get(7)
        .and_then(|day| day.parse::<i64>().ok())
        .is_some_and(|day| day <= today);
    Some((locked, expired))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_with_its_home_and_group() {
        let root = Account::lookup(0).unwrap();
        assert_eq!(root.name, "root");
        assert_eq!(root.gid, 0);
        assert!(root.groups.contains(&0), "{root:?}");
        assert!(root.home.is_absolute());
        assert!(!root.is_service(1000), "root is governed by allow_root");
    }

    #[test]
    fn an_unknown_uid_is_named_in_the_error() {
        let err = Account::lookup(3_999_999_999).unwrap_err();
        assert_eq!(err, AccountError::NoSuchUid(3_999_999_999));
        assert_eq!(
            err.to_string(),
            "uid 3999999999 has no account on the server"
        );
    }

    #[test]
    fn locked_and_expired_are_read_from_the_shadow_format() {
        let shadow = "alice:$6$salt$hash:19000:0:99999:7:::\n\
                      bob:!$6$salt$hash:19000:0:99999:7:::\n\
                      svc:!:19000::::::\n\
                      old:$6$x:19000:0:99999:7::19500:\n";
        assert_eq!(parse_shadow(shadow, "alice", 20000), Some((false, false)));
        assert_eq!(parse_shadow(shadow, "bob", 20000), Some((true, false)));
        assert_eq!(parse_shadow(shadow, "svc", 20000), Some((false, false)));
        assert_eq!(parse_shadow(shadow, "old", 20000), Some((false, true)));
        assert_eq!(parse_shadow(shadow, "old", 19000), Some((false, false)));
        assert_eq!(parse_shadow(shadow, "nobody-here", 20000), None);
    }
}
