//! Who may submit what: the server's policy, checked when a request arrives and again when a
//! job comes to start.
//!
//! Rights come from this host's account database, never from what a credential claims
//! beyond its uid: the requester's groups are the account's, its name must still belong to
//! its uid when the job starts, and locked, expired and service accounts are refused unless
//! the policy names them. With an allow list of commands, the job's environment is allow-list
//! only, since no deny list can name every variable that makes an interpreter run code of
//! the requester's choice.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::account::{Account, AccountError, DEFAULT_FIRST_REGULAR_UID};
use crate::auth::Identity;
use crate::job::{Clearance, CommandJob};

/// Variables clients may not set unless the policy allows them by name: they change what
/// the dynamic loader, shells or libc load. Always in force (a configured `env_deny` adds to
/// it). A trailing `*` matches any suffix.
pub const DEFAULT_ENV_DENY: &[&str] = &["LD_*", "BASH_ENV", "ENV", "GCONV_PATH", "NLSPATH"];

/// What the server accepts from whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitPolicy {
    /// User names that may submit. With `groups`, both empty means anybody authenticated
    /// (service accounts only when named).
    pub users: Vec<String>,
    /// Groups whose members (primary or supplementary, from the account database) may submit.
    pub groups: Vec<String>,
    /// User names that may see every job in full, and cancel any job. Nobody is an admin by
    /// uid alone: with MUNGE, root on any client host can claim uid 0.
    pub admins: Vec<String>,
    /// Whether jobs from uid 0 are accepted.
    pub allow_root: bool,
    /// Variables clients may not set (`NAME` or `PREFIX*`), on top of [`DEFAULT_ENV_DENY`].
    pub env_deny: Vec<String>,
    /// Exceptions to `env_deny`; with `commands`, the only variables clients may set.
    pub env_allow: Vec<String>,
    /// When set, the only programs jobs may run (absolute paths). The job's own process looks
    /// the program up with the requester's rights and runs it only if the file found is one
    /// of these (the same device and inode).
    pub commands: Option<Vec<PathBuf>>,
    /// Jobs run as their requester: a requester needs an account here.
    pub switch_user: bool,
    /// Whether a submit hook may merge a submission into another user's job.
    pub merge_across_users: bool,
    /// The first uid of regular accounts; below it (root aside) are service accounts.
    pub first_regular_uid: u32,
    /// Who may serve as a worker (`cq_worker`) and run the queue's jobs: `NAME` (that user,
    /// from any address) or `NAME@ADDRESS` (only from that IP address). Empty: nobody.
    /// With MUNGE, root on any host with the key can claim any uid: name the address.
    pub workers: Vec<String>,
}

impl Default for SubmitPolicy {
    /// Anybody authenticated but root and service accounts, the default deny list, any
    /// command, no admins, jobs run as the server's user.
    fn default() -> Self {
        Self {
            users: Vec::new(),
            groups: Vec::new(),
            admins: Vec::new(),
            allow_root: false,
            env_deny: Vec::new(),
            env_allow: Vec::new(),
            commands: None,
            switch_user: false,
            merge_across_users: false,
            first_regular_uid: DEFAULT_FIRST_REGULAR_UID,
            workers: Vec::new(),
        }
    }
}

/// Why the policy refuses a request; the message goes to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyRefusal {
    /// uid 0 asked and `allow_root` is off.
    #[error(
        "the server refuses jobs from root (uid 0): its policy has allow_root off (cq_server --allow-root, or allow_root = true in [policy], turns it on)"
    )]
    Root,
    /// The requester is in neither `users` nor `groups`.
    #[error("{0} may not use this server: not among the policy's users or groups")]
    NotAllowed(String),
    /// A service account that the policy does not name.
    #[error(
        "{0} is a service account (system uid or no login shell); the server admits it only when its policy names it in users or groups"
    )]
    ServiceAccount(String),
    /// The account is locked or expired.
    #[error("the account {0} is {1} on the server")]
    Disabled(String, &'static str),
    /// Jobs run as the requester, who has no account here.
    #[error("{0}; jobs run as their requester, so the user must exist on the server")]
    NoAccount(AccountError),
    /// The uid belongs to another user than at submission.
    #[error(
        "uid {uid} belonged to {was} when the job was submitted and to {now} now; the job is not run as someone else"
    )]
    AccountChanged {
        /// The uid.
        uid: u32,
        /// Its name at submission.
        was: String,
        /// Its name now.
        now: String,
    },
    /// The job sets a denied variable.
    #[error(
        "the server does not let clients set {0} (policy env_deny); its admin may list it in env_allow"
    )]
    Environment(String),
    /// With an allow list of commands, the job sets a variable that `env_allow` lacks.
    #[error(
        "the server only lets clients set the variables its policy lists in env_allow, and {0} is not among them"
    )]
    EnvironmentNotAllowed(String),
    /// The requester asked for work, and the policy's `workers` does not name it.
    #[error("{0} may not serve as a worker: the coordinator's policy does not name it in workers")]
    NotWorker(String),
    /// A worker that cannot run jobs as their requesters, on a server whose jobs do.
    #[error(
        "{0} may not serve as a worker: jobs here run as their requesters, which only a worker running as root can do"
    )]
    WorkerNotRoot(String),
    /// The program is not in `commands`.
    #[error("{0} is not among the commands this server runs (policy commands)")]
    Command(String),
    /// The credential the job was submitted with no longer holds (revoked, or its name now
    /// maps to another user).
    #[error("{0}")]
    Revoked(String),
}

impl SubmitPolicy {
    /// Checks who is asking: the account rules, `users`, `groups`, root. Returns whether the
    /// requester is an admin. `account` is the requester's account here (or why there is
    /// none).
    ///
    /// # Errors
    ///
    /// The first rule the requester breaks.
    pub fn check_requester(
        &self,
        who: &Identity,
        account: Result<&Account, &AccountError>,
    ) -> Result<bool, PolicyRefusal> {
        let name = account
            .ok()
            .map(|a| a.name.clone())
            .or_else(|| who.user.clone());
        let named = |list: &[String]| name.as_ref().is_some_and(|n| list.contains(n));
        // A locked or expired account is nobody's, an admin's included.
        if let Ok(account) = account {
            if account.locked {
                return Err(PolicyRefusal::Disabled(account.to_string(), "locked"));
            }
            if account.expired {
                return Err(PolicyRefusal::Disabled(account.to_string(), "expired"));
            }
        }
        if named(&self.admins) {
            // An admin is a person: a service account (or one given a nologin shell to
            // disable it) is not one.
            if let Ok(account) = account
                && account.is_service(self.first_regular_uid)
            {
                return Err(PolicyRefusal::ServiceAccount(account.to_string()));
            }
            return Ok(true);
        }
        if who.uid == 0 && !self.allow_root {
            return Err(PolicyRefusal::Root);
        }
        if self.switch_user
            && let Err(e) = account
        {
            return Err(PolicyRefusal::NoAccount(e.clone()));
        }
        let by_group = |account: &Account| {
            !self.groups.is_empty()
                && account
                    .group_names()
                    .iter()
                    .any(|group| self.groups.contains(group))
        };
        let listed = named(&self.users) || account.is_ok_and(by_group);
        if let Ok(account) = account
            && account.is_service(self.first_regular_uid)
            && !listed
        {
            return Err(PolicyRefusal::ServiceAccount(account.to_string()));
        }
        if (!self.users.is_empty() || !self.groups.is_empty()) && !listed {
            return Err(PolicyRefusal::NotAllowed(who.to_string()));
        }
        Ok(false)
    }

    /// Checks that `who`, connected from `from`, may serve as a worker (see
    /// [`workers`](Self::workers)). Workers need no account here: the name comes from the
    /// account database when there is one, else from the credential (a TLS user map).
    ///
    /// # Errors
    ///
    /// [`PolicyRefusal::NotWorker`] when no entry admits it.
    pub fn check_worker(
        &self,
        who: &Identity,
        account: Option<&Account>,
        from: Option<std::net::IpAddr>,
    ) -> Result<(), PolicyRefusal> {
        let name = account.map(|a| a.name.clone()).or_else(|| who.user.clone());
        let admitted = name.as_ref().is_some_and(|name| {
            self.workers
                .iter()
                .any(|entry| match entry.split_once('@') {
                    None => entry == name,
                    Some((user, address)) => {
                        user == name
                            && from.is_some_and(|from| {
                                address
                                    .parse::<std::net::IpAddr>()
                                    .is_ok_and(|a| a.to_canonical() == from.to_canonical())
                            })
                    }
                })
        });
        if admitted && self.switch_user && who.uid != 0 {
            // It would be handed every user's jobs (their commands and variables) and could
            // run none of them as their requester.
            Err(PolicyRefusal::WorkerNotRoot(who.to_string()))
        } else if admitted {
            Ok(())
        } else {
            Err(PolicyRefusal::NotWorker(format!(
                "{who}{}",
                from.map(|a| format!(" from {a}")).unwrap_or_default()
            )))
        }
    }

    /// Checks what is asked: root's jobs, the environment and (by name only: the file is
    /// checked when the job starts) the program.
    ///
    /// # Errors
    ///
    /// The first rule the job breaks.
    pub fn check_job(&self, who: &Identity, job: &CommandJob) -> Result<(), PolicyRefusal> {
        if who.uid == 0 && !self.allow_root {
            return Err(PolicyRefusal::Root);
        }
        for (name, _) in &job.env {
            if self.commands.is_some() {
                if !matches_any(&self.env_allow, name) {
                    return Err(PolicyRefusal::EnvironmentNotAllowed(name.clone()));
                }
            } else if self.denies(name) {
                return Err(PolicyRefusal::Environment(name.clone()));
            }
        }
        if let Some(allowed) = &self.commands {
            let program = job.argv.first().map(String::as_str).unwrap_or_default();
            let name = Path::new(program).file_name();
            if name.is_none() || !allowed.iter().any(|entry| entry.file_name() == name) {
                return Err(PolicyRefusal::Command(program.to_owned()));
            }
        }
        Ok(())
    }

    /// [`check_requester`](Self::check_requester) and [`check_job`](Self::check_job),
    /// looking the account up.
    ///
    /// # Errors
    ///
    /// The first rule broken.
    pub fn review(
        &self,
        who: &Identity,
        job: &CommandJob,
    ) -> Result<Option<Account>, PolicyRefusal> {
        let account = Account::lookup(who.uid);
        self.check_requester(who, account.as_ref())?;
        self.check_job(who, job)?;
        Ok(account.ok())
    }

    /// Checks a job again when it comes to start, against the policy now in force and the
    /// account database now: the uid must still belong to the name it had at submission.
    /// Returns what the job may do.
    ///
    /// # Errors
    ///
    /// The first rule broken.
    pub fn clear(&self, owner: &Identity, job: &CommandJob) -> Result<Clearance, PolicyRefusal> {
        let account = Account::lookup(owner.uid);
        if let (Some(was), Ok(now)) = (&owner.user, &account)
            && &now.name != was
        {
            return Err(PolicyRefusal::AccountChanged {
                uid: owner.uid,
                was: was.clone(),
                now: now.name.clone(),
            });
        }
        self.check_requester(owner, account.as_ref())?;
        self.check_job(owner, job)?;
        Ok(Clearance {
            run_as: if self.switch_user { account.ok() } else { None },
            commands: self.commands.clone(),
        })
    }

    fn denies(&self, name: &str) -> bool {
        (matches_any(&self.env_deny, name)
            || DEFAULT_ENV_DENY.iter().any(|p| pattern_matches(p, name)))
            && !matches_any(&self.env_allow, name)
    }
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, name))
}

/// Checks a command job when it is submitted and again when it comes to start, and says
/// what it may do. The engine calls it on a blocking thread (it may read the account
/// database, which may be remote), for every caller of
/// [`EngineHandle::submit_command`](crate::EngineHandle::submit_command).
pub trait AccessCheck: Send + Sync + 'static {
    /// Whether `requester` may queue `job`, and as whom.
    ///
    /// # Errors
    ///
    /// Why not; the submission is then refused
    /// ([`SubmitError::Refused`](crate::SubmitError::Refused)).
    fn admit(&self, requester: &Identity, job: &CommandJob) -> Result<Admitted, PolicyRefusal>;

    /// Whether `owner`'s `job` may start now, and with what rights.
    ///
    /// # Errors
    ///
    /// Why it may not; the job then ends without running
    /// ([`SpawnFailure::NotPermitted`](crate::SpawnFailure::NotPermitted)).
    fn clear(&self, owner: &Identity, job: &CommandJob) -> Result<Clearance, PolicyRefusal>;
}

/// A submission the [`AccessCheck`] admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Admitted {
    /// Who owns the job: the requester with the account database's name and primary group
    /// (a group a credential claims is never used).
    pub owner: Identity,
    /// Whether the job may be merged into another user's equal job.
    pub merge_across_users: bool,
}

impl Admitted {
    /// `owner`'s job, not to be merged into other users' jobs.
    pub fn new(owner: Identity) -> Self {
        Self {
            owner,
            merge_across_users: false,
        }
    }
}

/// The identity with the account database's name and primary group: a group the credential
/// claims is never used.
pub fn with_account(mut identity: Identity, account: Option<&Account>) -> Identity {
    if let Some(account) = account {
        identity.gid = account.gid;
        identity.user = Some(account.name.clone());
    }
    identity
}

/// The policy in force, replaceable while the server runs (e.g. on `SIGHUP`).
#[derive(Clone, Debug, Default)]
pub struct SharedPolicy(Arc<RwLock<Arc<SubmitPolicy>>>);

impl SharedPolicy {
    /// Shares `policy`.
    pub fn new(policy: SubmitPolicy) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(policy))))
    }

    /// The policy now in force; requests under way keep the one they started with.
    pub fn current(&self) -> Arc<SubmitPolicy> {
        // A panic while holding the lock cannot leave a half-written policy: it is one Arc.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `policy` in force for the requests and job starts that follow.
    pub fn replace(&self, policy: SubmitPolicy) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }
}

impl AccessCheck for SharedPolicy {
    fn admit(&self, requester: &Identity, job: &CommandJob) -> Result<Admitted, PolicyRefusal> {
        let policy = self.current();
        let account = policy.review(requester, job)?;
        Ok(Admitted {
            owner: with_account(requester.clone(), account.as_ref()),
            merge_across_users: policy.merge_across_users,
        })
    }

    fn clear(&self, owner: &Identity, job: &CommandJob) -> Result<Clearance, PolicyRefusal> {
        self.current().clear(owner, job)
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
            principal: None,
        }
    }

    fn account(uid: u32, name: &str, groups: Vec<u32>) -> Account {
        Account {
            uid,
            gid: uid,
            name: name.to_owned(),
            home: PathBuf::from("/home").join(name),
            shell: PathBuf::from("/bin/sh"),
            groups,
            locked: false,
            expired: false,
        }
    }

    fn review(policy: &SubmitPolicy, uid: u32, job: &CommandJob) -> Result<(), PolicyRefusal> {
        let name = if uid == 0 { "root" } else { "alice" };
        let who = who(uid, name);
        policy.check_requester(&who, Ok(&account(uid, name, vec![uid])))?;
        policy.check_job(&who, job)
    }

    #[test]
    fn workers_are_named_with_their_address_and_run_as_root_where_jobs_switch_users() {
        let at = |ip: &str| Some(ip.parse::<std::net::IpAddr>().unwrap());
        let policy = SubmitPolicy {
            workers: vec!["root@10.0.0.7".into(), "builder".into()],
            ..SubmitPolicy::default()
        };
        let root = who(0, "root");
        assert_eq!(policy.check_worker(&root, None, at("10.0.0.7")), Ok(()));
        // The same address written as an IPv4-mapped IPv6 one (a server on [::]).
        assert_eq!(
            policy.check_worker(&root, None, at("::ffff:10.0.0.7")),
            Ok(())
        );
        assert!(policy.check_worker(&root, None, at("10.0.0.8")).is_err());
        assert!(policy.check_worker(&root, None, None).is_err());
        assert!(
            policy
                .check_worker(&who(1000, "alice"), None, at("10.0.0.7"))
                .is_err()
        );
        let builder = who(1001, "builder");
        assert_eq!(policy.check_worker(&builder, None, at("192.0.2.1")), Ok(()));
        // Red team: where jobs run as their requesters, a worker that is not root would get
        // every user's jobs and could run none of them.
        let switching = SubmitPolicy {
            switch_user: true,
            ..policy
        };
        assert!(matches!(
            switching.check_worker(&builder, None, at("192.0.2.1")),
            Err(PolicyRefusal::WorkerNotRoot(_))
        ));
        assert_eq!(switching.check_worker(&root, None, at("10.0.0.7")), Ok(()));
    }

    #[test]
    fn root_is_refused_unless_allowed() {
        let job = CommandJob::new(["true"]);
        let mut policy = SubmitPolicy::default();
        assert_eq!(review(&policy, 0, &job), Err(PolicyRefusal::Root));
        assert!(review(&policy, 1000, &job).is_ok());
        policy.allow_root = true;
        assert!(review(&policy, 0, &job).is_ok());
        assert!(PolicyRefusal::Root.to_string().contains("--allow-root"));
    }

    #[test]
    fn users_and_groups_restrict_who_submits() {
        let policy = SubmitPolicy {
            users: vec!["bob".into()],
            // The root group exists everywhere, so the test needs no made-up group database.
            groups: vec!["root".into()],
            ..SubmitPolicy::default()
        };
        let alice = who(1000, "alice");
        let refused = policy.check_requester(&alice, Ok(&account(1000, "alice", vec![1000])));
        assert_eq!(
            refused,
            Err(PolicyRefusal::NotAllowed("alice(1000)".into()))
        );
        let member = policy.check_requester(&alice, Ok(&account(1000, "alice", vec![1000, 0])));
        assert_eq!(member, Ok(false));
        let bob = who(1001, "bob");
        let unknown = AccountError::NoSuchUid(1001);
        assert!(policy.check_requester(&bob, Err(&unknown)).is_ok());
    }

    #[test]
    fn service_locked_and_expired_accounts_are_refused() {
        let policy = SubmitPolicy::default();
        let daemon = account(1, "daemon", vec![1]);
        assert_eq!(
            policy.check_requester(&who(1, "daemon"), Ok(&daemon)),
            Err(PolicyRefusal::ServiceAccount("daemon(1)".into()))
        );
        let listed = SubmitPolicy {
            users: vec!["daemon".into()],
            ..SubmitPolicy::default()
        };
        assert_eq!(
            listed.check_requester(&who(1, "daemon"), Ok(&daemon)),
            Ok(false)
        );
        let mut nologin = account(1500, "svc", vec![1500]);
        nologin.shell = PathBuf::from("/usr/sbin/nologin");
        assert!(matches!(
            policy.check_requester(&who(1500, "svc"), Ok(&nologin)),
            Err(PolicyRefusal::ServiceAccount(_))
        ));
        let mut locked = account(1000, "alice", vec![1000]);
        locked.locked = true;
        assert_eq!(
            policy.check_requester(&who(1000, "alice"), Ok(&locked)),
            Err(PolicyRefusal::Disabled("alice(1000)".into(), "locked"))
        );
        let mut expired = account(1000, "alice", vec![1000]);
        expired.expired = true;
        assert!(
            listed
                .check_requester(&who(1000, "alice"), Ok(&expired))
                .is_err()
        );
    }

    #[test]
    fn admins_are_named_never_implied_by_uid_zero() {
        let policy = SubmitPolicy {
            allow_root: true,
            admins: vec!["carol".into()],
            ..SubmitPolicy::default()
        };
        assert_eq!(
            policy.check_requester(&who(0, "root"), Ok(&account(0, "root", vec![0]))),
            Ok(false)
        );
        assert_eq!(
            policy.check_requester(&who(1002, "carol"), Ok(&account(1002, "carol", vec![1002]))),
            Ok(true)
        );
    }

    #[test]
    fn a_locked_expired_or_nologin_admin_is_refused_like_anyone() {
        let policy = SubmitPolicy {
            admins: vec!["carol".into()],
            ..SubmitPolicy::default()
        };
        let mut locked = account(1002, "carol", vec![1002]);
        locked.locked = true;
        assert_eq!(
            policy.check_requester(&who(1002, "carol"), Ok(&locked)),
            Err(PolicyRefusal::Disabled("carol(1002)".into(), "locked"))
        );
        let mut expired = account(1002, "carol", vec![1002]);
        expired.expired = true;
        assert_eq!(
            policy.check_requester(&who(1002, "carol"), Ok(&expired)),
            Err(PolicyRefusal::Disabled("carol(1002)".into(), "expired"))
        );
        let mut nologin = account(1002, "carol", vec![1002]);
        nologin.shell = PathBuf::from("/usr/sbin/nologin");
        assert_eq!(
            policy.check_requester(&who(1002, "carol"), Ok(&nologin)),
            Err(PolicyRefusal::ServiceAccount("carol(1002)".into()))
        );
    }

    #[test]
    fn a_requester_without_account_is_refused_when_jobs_switch_users() {
        let policy = SubmitPolicy {
            switch_user: true,
            ..SubmitPolicy::default()
        };
        let unknown = AccountError::NoSuchUid(4242);
        let refused = policy.check_requester(&who(4242, "x"), Err(&unknown));
        assert_eq!(refused, Err(PolicyRefusal::NoAccount(unknown)));
    }

    #[test]
    fn the_loader_variables_stay_denied_whatever_the_configured_list() {
        let mut policy = SubmitPolicy {
            env_deny: vec!["PYTHON*".into()],
            ..SubmitPolicy::default()
        };
        let job = CommandJob::new(["true"])
            .with_env("USE", "x")
            .with_env("LD_PRELOAD", "/tmp/evil.so");
        assert_eq!(
            review(&policy, 1000, &job),
            Err(PolicyRefusal::Environment("LD_PRELOAD".into()))
        );
        let python = CommandJob::new(["true"]).with_env("PYTHONPATH", "/tmp");
        assert!(review(&policy, 1000, &python).is_err());
        policy.env_allow.push("LD_PRELOAD".into());
        assert!(review(&policy, 1000, &job).is_ok());
    }

    #[test]
    fn with_a_command_list_only_allowed_variables_pass() {
        let policy = SubmitPolicy {
            commands: Some(vec![PathBuf::from("/usr/bin/emerge")]),
            env_allow: vec!["USE".into(), "CPU_FLAGS_*".into()],
            ..SubmitPolicy::default()
        };
        let ok = CommandJob::new(["emerge"])
            .with_env("USE", "X")
            .with_env("CPU_FLAGS_X86", "sse2");
        assert_eq!(review(&policy, 1000, &ok), Ok(()));
        for name in [
            "PYTHONPATH",
            "PERL5LIB",
            "BASH_FUNC_x%%",
            "SHELLOPTS",
            "PS4",
            "IFS",
        ] {
            let job = CommandJob::new(["emerge"]).with_env(name, "x");
            assert_eq!(
                review(&policy, 1000, &job),
                Err(PolicyRefusal::EnvironmentNotAllowed(name.into())),
                "{name}"
            );
        }
    }

    #[test]
    fn the_command_list_names_programs_and_leaves_the_file_to_the_start() {
        let policy = SubmitPolicy {
            commands: Some(vec![
                PathBuf::from("/usr/bin/emerge"),
                PathBuf::from("/srv/build.sh"),
            ]),
            ..SubmitPolicy::default()
        };
        for fine in ["emerge", "/usr/bin/emerge", "./build.sh", "/bin/emerge"] {
            assert_eq!(
                review(&policy, 1000, &CommandJob::new([fine])),
                Ok(()),
                "{fine}"
            );
        }
        for refused in ["sh", "/usr/bin/emerge2", "/"] {
            assert_eq!(
                review(&policy, 1000, &CommandJob::new([refused])),
                Err(PolicyRefusal::Command(refused.into())),
                "{refused}"
            );
        }
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
