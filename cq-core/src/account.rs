//! Local accounts: who a job runs as when the server switches to the requester.

use std::ffi::CString;
use std::fmt;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};

/// A local user as a job running on its behalf needs it: ids, supplementary groups, home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// User id.
    pub uid: u32,
    /// Primary group id the job runs with.
    pub gid: u32,
    /// Login name.
    pub name: String,
    /// Home directory.
    pub home: PathBuf,
    /// Supplementary group ids (including `gid`), as `initgroups` would set them.
    pub groups: Vec<u32>,
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
    /// Looks up `uid` in the user database; the job runs with primary group `gid` (the
    /// requester's, which may differ from the account's default) plus the user's groups.
    ///
    /// # Errors
    ///
    /// [`AccountError::NoSuchUid`] when the uid is unknown here.
    pub fn lookup(uid: u32, gid: u32) -> Result<Self, AccountError> {
        let lookup = |e: nix::Error| AccountError::Lookup {
            uid,
            reason: e.desc().to_owned(),
        };
        let user = User::from_uid(Uid::from_raw(uid))
            .map_err(lookup)?
            .ok_or(AccountError::NoSuchUid(uid))?;
        let name = CString::new(user.name.clone()).map_err(|_| AccountError::NoSuchUid(uid))?;
        let mut groups: Vec<u32> = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
            .map_err(lookup)?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        Ok(Self {
            uid,
            gid,
            name: user.name,
            home: user.dir,
            groups,
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
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_with_its_home_and_group() {
        let root = Account::lookup(0, 0).unwrap();
        assert_eq!(root.name, "root");
        assert!(root.groups.contains(&0), "{root:?}");
        assert!(root.home.is_absolute());
    }

    #[test]
    fn an_unknown_uid_is_named_in_the_error() {
        let err = Account::lookup(3_999_999_999, 0).unwrap_err();
        assert_eq!(err, AccountError::NoSuchUid(3_999_999_999));
        assert_eq!(
            err.to_string(),
            "uid 3999999999 has no account on the server"
        );
    }
}
