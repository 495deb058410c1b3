//! Who may submit what: the server's submit policy.
//!
//! The policy is checked on every submission before any hook or the engine sees it; a refused
//! request gets the reason and nothing runs. It covers who (users, groups, root), what the
//! client may put in the job's environment, and optionally which programs may run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::account::{Account, AccountError};
use crate::auth::Identity;
use crate::executor::DEFAULT_PATH;
use crate::job::CommandJob;

/// Variables clients may not set unless the policy allows them by name: they change what
/// the dynamic loader, shells or libc load, so they would let a client run code of its choice
/// inside any command the server allows. A trailing `*` matches any suffix.
pub const DEFAULT_ENV_DENY: &[&str] = &["LD_*", "BASH_ENV", "ENV", "GCONV_PATH", "NLSPATH"];

/// What the server accepts from whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitPolicy {
    /// User names that may submit. With `groups`, both empty means anybody authenticated.
    pub users: Vec<String>,
    /// Groups whose members (primary or supplementary) may submit.
    pub groups: Vec<String>,
    /// Whether requests from uid 0 are accepted.
    pub allow_root: bool,
    /// Variables clients may not set (`NAME` or `PREFIX*`).
    pub env_deny: Vec<String>,
    /// Exceptions to `env_deny`.
    pub env_allow: Vec<String>,
    /// When set, the only programs jobs may run (absolute paths). A bare command name is looked
    /// up in the job's `PATH` and replaced by the path found, so what runs is what was checked.
    pub commands: Option<Vec<PathBuf>>,
    /// `PATH` for that lookup when the client sets none: the executor's base `PATH`.
    pub path: String,
    /// Refuse requesters without a local account (needed when jobs run as the requester);
    /// the server's own user is exempt, since its jobs need no switch.
    pub require_account: bool,
}

impl Default for SubmitPolicy {
    /// Anybody authenticated but root, the default deny list, any command.
    fn default() -> Self {
        Self {
            users: Vec::new(),
            groups: Vec::new(),
            allow_root: false,
            env_deny: DEFAULT_ENV_DENY.iter().map(|s| (*s).to_owned()).collect(),
            env_allow: Vec::new(),
            commands: None,
            path: DEFAULT_PATH.to_owned(),
            require_account: false,
        }
    }
}

/// Why the policy refuses a submission; the message goes to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyRefusal {
    /// uid 0 asked and `allow_root` is off.
    #[error(
        "the server refuses jobs from root (uid 0): its policy has allow_root off (cq_server --allow-root, or allow_root = true in [policy], turns it on)"
    )]
    Root,
    /// The requester is in neither `users` nor `groups`.
    #[error("{0} may not submit jobs to this server: not among the policy's users or groups")]
    NotAllowed(String),
    /// Jobs run as the requester, who has no account here.
    #[error("{0}; jobs run as their requester, so the user must exist on the server")]
    NoAccount(AccountError),
    /// The job sets a denied variable.
    #[error(
        "the server does not let clients set {0} (policy env_deny); its admin may list it in env_allow"
    )]
    Environment(String),
    /// The program is not in `commands`.
    #[error("{0} is not among the commands this server runs (policy commands)")]
    Command(String),
    /// A command allow list is set and the program cannot be found.
    #[error("command not found on the server: {0}")]
    CommandNotFound(String),
}

impl SubmitPolicy {
    /// Checks `job` from `who`, looking up the local account only when a rule needs it. With
    /// a command allow list, rewrites `argv[0]` to the absolute path that was checked.
    ///
    /// # Errors
    ///
    /// The first rule the submission breaks.
    pub fn review(&self, who: &Identity, job: &mut CommandJob) -> Result<(), PolicyRefusal> {
        let needs_account =
            self.account_required(who) || !self.users.is_empty() || !self.groups.is_empty();
        let account = if needs_account {
            Account::lookup(who.uid, who.gid)
        } else {
            Err(AccountError::Lookup {
                uid: who.uid,
                reason: "not needed".into(),
            })
        };
        self.review_with(who, account.as_ref(), job)
    }

    /// [`review`](Self::review) with the requester's account (or why there is none) given.
    ///
    /// # Errors
    ///
    /// The first rule the submission breaks.
    pub fn review_with(
        &self,
        who: &Identity,
        account: Result<&Account, &AccountError>,
        job: &mut CommandJob,
    ) -> Result<(), PolicyRefusal> {
        if who.uid == 0 && !self.allow_root {
            return Err(PolicyRefusal::Root);
        }
        if self.account_required(who)
            && let Err(e) = account
        {
            return Err(PolicyRefusal::NoAccount(e.clone()));
        }
        if !self.users.is_empty() || !self.groups.is_empty() {
            let name = account
                .ok()
                .map(|a| a.name.clone())
                .or_else(|| who.user.clone());
            let by_name = name.as_ref().is_some_and(|n| self.users.contains(n));
            let by_group = !self.groups.is_empty()
                && account.is_ok_and(|a| {
                    a.group_names()
                        .iter()
                        .any(|group| self.groups.contains(group))
                });
            if !by_name && !by_group {
                return Err(PolicyRefusal::NotAllowed(who.to_string()));
            }
        }
        if let Some((name, _)) = job.env.iter().find(|(name, _)| self.denies(name)) {
            return Err(PolicyRefusal::Environment(name.clone()));
        }
        if let Some(allowed) = &self.commands {
            let found = job
                .find_program(&self.path, Path::new("/"))
                .ok_or_else(|| PolicyRefusal::CommandNotFound(job.argv[0].clone()))?;
            if !allowed.iter().any(|entry| same_file(entry, &found)) {
                return Err(PolicyRefusal::Command(job.argv[0].clone()));
            }
            job.argv[0] = found.to_string_lossy().into_owned();
        }
        Ok(())
    }

    /// Whether `who` must have an account here: jobs switch users, and `who` is not the
    /// server's own user (whose jobs need no switch, hence no lookup per job).
    fn account_required(&self, who: &Identity) -> bool {
        self.require_account && who.uid != nix::unistd::geteuid().as_raw()
    }

    fn denies(&self, name: &str) -> bool {
        let matches = |pattern: &String| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        };
        self.env_deny.iter().any(matches) && !self.env_allow.iter().any(matches)
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
}

/// The policy in force, replaceable while the server runs (e.g. on `SIGHUP`).
#[derive(Clone, Debug, Default)]
pub struct SharedPolicy(Arc<RwLock<Arc<SubmitPolicy>>>);

impl SharedPolicy {
    /// Shares `policy`.
    pub fn new(policy: SubmitPolicy) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(policy))))
    }

    /// The policy now in force; submissions under way keep the one they started with.
    pub fn current(&self) -> Arc<SubmitPolicy> {
        // A panic while holding the lock cannot leave a half-written policy: it is one Arc.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `policy` in force for the submissions that follow.
    pub fn replace(&self, policy: SubmitPolicy) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;

    fn who(uid: u32, user: &str) -> Identity {
        Identity {
            uid,
            gid: uid,
            user: Some(user.to_owned()),
            host: None,
            method: AuthMethod::Local,
        }
    }

    fn account(uid: u32, name: &str, groups: Vec<u32>) -> Account {
        Account {
            uid,
            gid: uid,
            name: name.to_owned(),
            home: PathBuf::from("/home").join(name),
            groups,
        }
    }

    fn review(policy: &SubmitPolicy, uid: u32, job: &mut CommandJob) -> Result<(), PolicyRefusal> {
        let name = if uid == 0 { "root" } else { "alice" };
        policy.review_with(&who(uid, name), Ok(&account(uid, name, vec![uid])), job)
    }

    #[test]
    fn root_is_refused_unless_allowed() {
        let mut job = CommandJob::new(["true"]);
        let mut policy = SubmitPolicy::default();
        assert_eq!(review(&policy, 0, &mut job), Err(PolicyRefusal::Root));
        assert!(review(&policy, 1000, &mut job).is_ok());
        policy.allow_root = true;
        assert!(review(&policy, 0, &mut job).is_ok());
        assert!(PolicyRefusal::Root.to_string().contains("--allow-root"));
    }

    #[test]
    fn users_and_groups_restrict_who_submits() {
        let mut job = CommandJob::new(["true"]);
        let policy = SubmitPolicy {
            users: vec!["bob".into()],
            // The root group exists everywhere, so the test needs no made-up group database.
            groups: vec!["root".into()],
            ..SubmitPolicy::default()
        };
        let alice = who(1000, "alice");
        let refused = policy.review_with(&alice, Ok(&account(1000, "alice", vec![1000])), &mut job);
        assert_eq!(
            refused,
            Err(PolicyRefusal::NotAllowed("alice(1000)".into()))
        );
        let member =
            policy.review_with(&alice, Ok(&account(1000, "alice", vec![1000, 0])), &mut job);
        assert!(member.is_ok(), "{member:?}");
        let bob = who(1001, "bob");
        let unknown = AccountError::NoSuchUid(1001);
        assert!(policy.review_with(&bob, Err(&unknown), &mut job).is_ok());
    }

    #[test]
    fn a_requester_without_account_is_refused_when_one_is_required() {
        let mut job = CommandJob::new(["true"]);
        let policy = SubmitPolicy {
            require_account: true,
            ..SubmitPolicy::default()
        };
        let unknown = AccountError::NoSuchUid(4242);
        let refused = policy.review_with(&who(4242, "x"), Err(&unknown), &mut job);
        assert_eq!(refused, Err(PolicyRefusal::NoAccount(unknown)));
    }

    #[test]
    fn denied_variables_are_refused_by_name_unless_allowed() {
        let mut policy = SubmitPolicy::default();
        let mut job = CommandJob::new(["true"])
            .with_env("USE", "x")
            .with_env("LD_PRELOAD", "/tmp/evil.so");
        assert_eq!(
            review(&policy, 1000, &mut job),
            Err(PolicyRefusal::Environment("LD_PRELOAD".into()))
        );
        policy.env_allow.push("LD_PRELOAD".into());
        assert!(review(&policy, 1000, &mut job).is_ok());
        let mut job = CommandJob::new(["true"]).with_env("BASH_ENV", "/tmp/x");
        assert!(review(&policy, 1000, &mut job).is_err());
    }

    #[test]
    fn the_command_list_checks_the_program_found_and_pins_it() {
        let policy = SubmitPolicy {
            commands: Some(vec![PathBuf::from("/bin/true")]),
            ..SubmitPolicy::default()
        };
        let mut job = CommandJob::new(["true"]);
        assert!(review(&policy, 1000, &mut job).is_ok());
        assert!(
            same_file(Path::new(&job.argv[0]), Path::new("/bin/true")),
            "{:?}",
            job.argv
        );
        let mut job = CommandJob::new(["sh", "-c", "true"]);
        assert_eq!(
            review(&policy, 1000, &mut job),
            Err(PolicyRefusal::Command("sh".into()))
        );
        let mut job = CommandJob::new(["no-such-cq-program"]);
        assert_eq!(
            review(&policy, 1000, &mut job),
            Err(PolicyRefusal::CommandNotFound("no-such-cq-program".into()))
        );
    }

    #[test]
    fn a_replaced_policy_applies_to_what_follows() {
        let shared = SharedPolicy::new(SubmitPolicy::default());
        let before = shared.current();
        shared.replace(SubmitPolicy {
            allow_root: true,
            ..SubmitPolicy::default()
        });
        assert!(!before.allow_root);
        assert!(shared.current().allow_root);
    }
}
