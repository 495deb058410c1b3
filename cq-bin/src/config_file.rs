//! `/etc/cq/cq.toml`: defaults for both programs and the server's policy.
//!
//! `[server]` and `[client]` hold the programs' long options, spelt with underscores
//! (`state_dir = "/var/lib/cq"` is `--state-dir /var/lib/cq`). They become command-line
//! arguments placed before the real ones, so they go through the very parsers and checks the
//! options do, and an option given on the command line wins over the file. `[policy]` says who
//! may submit what; `[jobs]` sets the base environment of every job.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches};
use cq_core::SubmitPolicy;
use serde::Deserialize;
use toml::Spanned;

/// The `[client]` key that is not an option: variables passed to every job when set.
const PASS_ENV: &str = "pass_env";

/// Read when `--config` is not given (and skipped when it does not exist).
pub const DEFAULT_CONFIG: &str = "/etc/cq/cq.toml";

/// A parsed configuration file.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    text: String,
    raw: Raw,
}

/// Options of one program: option name → value, with where they are.
type OptionTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    server: OptionTable,
    #[serde(default)]
    client: OptionTable,
    #[serde(default)]
    worker: OptionTable,
    #[serde(default)]
    executor: OptionTable,
    #[serde(default)]
    policy: PolicySection,
    #[serde(default)]
    jobs: JobsSection,
    #[serde(default)]
    emerge: EmergeSection,
}

/// `[policy]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    allow_root: bool,
    #[serde(default)]
    env_deny: Vec<String>,
    #[serde(default)]
    env_allow: Vec<String>,
    commands: Option<Vec<Spanned<PathBuf>>>,
    #[serde(default)]
    merge_across_users: bool,
    #[serde(default)]
    workers: Vec<Spanned<String>>,
}

/// `[jobs]`: what every job starts from.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSection {
    /// Base environment (`PATH` at least) [default: `PATH` only].
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory of jobs that name none (or whose directory is not on the server).
    pub cwd: Option<PathBuf>,
}

/// `[emerge]`: cq-emerge's settings (see `cq-emerge --help`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EmergeSection {
    /// The program the build host runs for each package [default: `cq-emerge-build`].
    pub build_command: Option<String>,
    /// emerge options for installing a built package [default: `["--usepkgonly"]`].
    pub install_options: Option<Vec<String>>,
    /// At most this many builds outstanding [default: all].
    pub jobs: Option<usize>,
    /// Portage variables of this machine (`portageq envvar`) every build gets.
    pub pass_variables: Option<Vec<String>>,
    /// The cq_client program [default: the one beside cq-emerge, else in `PATH`].
    pub client: Option<PathBuf>,
    /// Options for cq_client, before cq-emerge's own.
    pub client_options: Option<Vec<String>>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A value or key is wrong.
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The key (with its section).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Which program's section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// `[server]`, for cq_server.
    Server,
    /// `[client]`, for cq_client.
    Client,
    /// `[worker]`, for cq_worker.
    Worker,
    /// `[executor]`, for both cq_server's own worker and cq_worker: how jobs run
    /// ([`EXECUTOR_OPTIONS`](crate::executor_args::EXECUTOR_OPTIONS) only, and only there).
    Executor,
}

impl ConfigFile {
    /// Loads `explicit`, or [`DEFAULT_CONFIG`] if it exists; `None` when neither applies.
    ///
    /// # Errors
    ///
    /// An unreadable file, or one that is not valid for cq, with the line and key.
    pub fn load(explicit: Option<&Path>) -> Result<Option<Self>, ConfigError> {
        let path = match explicit {
            Some(path) => path.to_owned(),
            None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
            None => return Ok(None),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(path, text).map(Some)
    }

    /// Parses `text`, read from `path`.
    ///
    /// # Errors
    ///
    /// Syntax errors and unknown or mistyped keys, with the line and key.
    pub fn parse(path: PathBuf, text: String) -> Result<Self, ConfigError> {
        let raw: Raw = match toml::from_str(&text) {
            Ok(raw) => raw,
            Err(e) => {
                let at = e.span().map_or(0, |s| s.start);
                let (line, key) = locate(&text, at);
                return Err(ConfigError::Invalid {
                    path,
                    line,
                    key,
                    message: e.message().trim().to_owned(),
                });
            }
        };
        let file = Self { path, text, raw };
        if let Some(commands) = &file.raw.policy.commands
            && let Some(relative) = commands.iter().find(|c| !c.get_ref().is_absolute())
        {
            return Err(file.invalid(
                relative.span().start,
                "policy.commands",
                format!("{} is not an absolute path", relative.get_ref().display()),
            ));
        }
        // An entry that can never match would silently admit nobody.
        if let Some(bad) = file.raw.policy.workers.iter().find(|w| {
            let (name, address) = match w.get_ref().split_once('@') {
                Some((name, address)) => (name, Some(address)),
                None => (w.get_ref().as_str(), None),
            };
            name.is_empty() || address.is_some_and(|a| a.parse::<std::net::IpAddr>().is_err())
        }) {
            return Err(file.invalid(
                bad.span().start,
                "policy.workers",
                format!(
                    "{:?} is neither NAME nor NAME@IP-ADDRESS (one address, no port or host name)",
                    bad.get_ref()
                ),
            ));
        }
        Ok(file)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The submit policy of `[policy]`; `allow_root` is on if either the file or `allow_root`
    /// (the command line) says so.
    pub fn policy(&self, allow_root: bool) -> SubmitPolicy {
        policy_from(&self.raw.policy, allow_root)
    }

    /// `[jobs]`.
    pub fn jobs(&self) -> &JobsSection {
        &self.raw.jobs
    }

    /// `pass_env` of `[client]`: names of variables every submitted job gets from the
    /// client's environment (as `-E NAME`), when they are set there.
    ///
    /// # Errors
    ///
    /// When it is not a list of variable names.
    pub fn client_pass_env(&self) -> Result<Vec<String>, ConfigError> {
        let Some((key, value)) = self
            .raw
            .client
            .iter()
            .find(|(key, _)| key.get_ref() == PASS_ENV)
        else {
            return Ok(Vec::new());
        };
        let qualified = format!("client.{PASS_ENV}");
        let names: Option<Vec<String>> = match value.get_ref() {
            toml::Value::Array(items) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .filter(|name| cq_core::job::check_env_name(name).is_ok())
                        .map(str::to_owned)
                })
                .collect(),
            _ => None,
        };
        names.ok_or_else(|| {
            self.invalid(
                key.span().start.max(value.span().start),
                &qualified,
                "expected a list of variable names, e.g. [\"USE\", \"FEATURES\"]".into(),
            )
        })
    }

    /// `[emerge]`.
    pub fn emerge(&self) -> &EmergeSection {
        &self.raw.emerge
    }

    /// Command-line arguments for `section`'s options that `given` (the command line as
    /// parsed) does not set itself. Only options `allowed` names may appear in the file.
    ///
    /// # Errors
    ///
    /// An unknown option or a value its parser refuses, with the line and key.
    pub fn arguments(
        &self,
        section: Section,
        command: &clap::Command,
        given: &ArgMatches,
        allowed: impl Fn(&str) -> bool,
    ) -> Result<Vec<OsString>, ConfigError> {
        let (table, name) = match section {
            Section::Server => (&self.raw.server, "server"),
            Section::Client => (&self.raw.client, "client"),
            Section::Worker => (&self.raw.worker, "worker"),
            Section::Executor => (&self.raw.executor, "executor"),
        };
        let mut arguments = Vec::new();
        for (key, value) in table {
            if section == Section::Client && key.get_ref() == PASS_ENV {
                continue;
            }
            let at = key.span().start;
            let qualified = format!("{name}.{}", key.get_ref());
            let long = key.get_ref().replace('_', "-");
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
                .filter(|a| allowed(a.get_id().as_str()) && !a.is_hide_set());
            let Some(arg) = arg else {
                return Err(self.invalid(at, &qualified, "no such option here".into()));
            };
            let id = arg.get_id().as_str();
            if given.value_source(id) == Some(ValueSource::CommandLine) {
                continue;
            }
            // A default that what was typed rules out (a post script with --detach) is
            // left out, not an error.
            let typed = |other: &clap::Arg| {
                given.value_source(other.get_id().as_str()) == Some(ValueSource::CommandLine)
            };
            let ruled_out = command.get_arg_conflicts_with(arg).into_iter().any(typed)
                || command.get_arguments().filter(|a| typed(a)).any(|a| {
                    command
                        .get_arg_conflicts_with(a)
                        .iter()
                        .any(|c| c.get_id() == arg.get_id())
                });
            if ruled_out {
                continue;
            }
            let flag = matches!(arg.get_action(), ArgAction::SetTrue);
            let mut these = Vec::new();
            let values = match value.get_ref() {
                toml::Value::Array(items) => items.iter().collect(),
                one => vec![one],
            };
            for item in values {
                let text = match item {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) if flag => {
                        if *b {
                            these.push(OsString::from(format!("--{long}")));
                        }
                        continue;
                    }
                    toml::Value::Boolean(b) => b.to_string(),
                    _ => {
                        return Err(self.invalid(
                            value.span().start,
                            &qualified,
                            "expected a string, number, boolean or a list of them".into(),
                        ));
                    }
                };
                if flag {
                    return Err(self.invalid(
                        value.span().start,
                        &qualified,
                        "expected true or false".into(),
                    ));
                }
                these.push(OsString::from(format!("--{long}")));
                these.push(OsString::from(text));
            }
            // Checked alone, so that a bad value is reported with its line, not as if it had
            // been typed.
            let mut alone = vec![OsString::from(command.get_name())];
            alone.extend(these.iter().cloned());
            if let Err(e) = command.clone().try_get_matches_from(alone)
                && e.kind() != clap::error::ErrorKind::MissingRequiredArgument
            {
                return Err(self.invalid(value.span().start, &qualified, clap_reason(&e)));
            }
            arguments.extend(these);
        }
        Ok(arguments)
    }

    fn invalid(&self, at: usize, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            line: locate(&self.text, at).0,
            key: key.to_owned(),
            message,
        }
    }
}

/// The default policy when there is no file.
pub fn default_policy(allow_root: bool) -> SubmitPolicy {
    policy_from(&PolicySection::default(), allow_root)
}

fn policy_from(section: &PolicySection, allow_root: bool) -> SubmitPolicy {
    SubmitPolicy {
        users: section.users.clone(),
        groups: section.groups.clone(),
        admins: section.admins.clone(),
        allow_root: allow_root || section.allow_root,
        // Adds to the built-in list (the loader's variables), never replaces it.
        env_deny: section.env_deny.clone(),
        env_allow: section.env_allow.clone(),
        commands: section
            .commands
            .as_ref()
            .map(|c| c.iter().map(|p| p.get_ref().clone()).collect()),
        merge_across_users: section.merge_across_users,
        workers: section
            .workers
            .iter()
            .map(|w| w.get_ref().clone())
            .collect(),
        ..SubmitPolicy::default()
    }
}

/// The line (1-based) of byte `at` and the key written on it, if any.
fn locate(text: &str, at: usize) -> (usize, String) {
    let at = at.min(text.len());
    let line = text[..at].matches('\n').count() + 1;
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let current = text[start..].lines().next().unwrap_or_default();
    let key = match current.split_once('=') {
        Some((key, _)) => key.trim().trim_matches('"').to_owned(),
        None => current.trim().to_owned(),
    };
    (line, key)
}

/// clap's message without its "error: " prefix and usage lines.
fn clap_reason(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    #[command(name = "prog")]
    struct Prog {
        #[arg(long, default_value_t = 1)]
        port: u16,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        requeue_lost: bool,
        #[arg(long)]
        uid: Vec<u32>,
    }

    fn file(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse(PathBuf::from("/etc/cq/cq.toml"), text.to_owned())
    }

    fn merged(text: &str, argv: &[&str]) -> Result<Prog, ConfigError> {
        let command = Prog::command();
        let given = command.clone().get_matches_from(argv);
        let mut all: Vec<OsString> = vec!["prog".into()];
        all.extend(file(text)?.arguments(Section::Server, &command, &given, |_| true)?);
        all.extend(argv[1..].iter().map(OsString::from));
        Ok(Prog::parse_from(all))
    }

    #[test]
    fn options_come_from_the_file_and_the_command_line_wins() {
        let text =
            "[server]\nport = 7\nstate_dir = \"/srv/cq\"\nrequeue_lost = true\nuid = [1, 2]\n";
        let from_file = merged(text, &["prog"]).unwrap();
        assert_eq!(from_file.port, 7);
        assert_eq!(from_file.state_dir, Some(PathBuf::from("/srv/cq")));
        assert!(from_file.requeue_lost);
        assert_eq!(from_file.uid, [1, 2]);
        let overridden = merged(text, &["prog", "--port", "9", "--uid", "5"]).unwrap();
        assert_eq!(overridden.port, 9);
        assert_eq!(overridden.uid, [5]);
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let err = merged("[server]\n\nport = \"many\"\n", &["prog"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/cq/cq.toml:3: server.port: "),
            "{text}"
        );
        assert!(text.contains("many"), "{text}");
        let err = merged("[server]\nprot = 1\n", &["prog"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/cq/cq.toml:2: server.prot: no such option here"
        );
        let err = file("[policy]\nusers = \"alice\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/cq/cq.toml:2: users: "), "{err}");
        let err = file("[policy]\nallow_root = true\nuserz = []\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/cq/cq.toml:3: userz: "), "{err}");
        let err = file("[server\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/cq/cq.toml:1: "), "{err}");
        let err = file("[policy]\ncommands = [\"/usr/bin/emerge\", \"emerge\"]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/etc/cq/cq.toml:2: policy.commands: emerge is not an absolute path"
        );
        // Red team: entries that could never match admitted nobody, silently.
        for entry in [
            "root@buildhost",
            "root@10.0.0.7:48005",
            "@10.0.0.7",
            "root@10.0.0.0/24",
        ] {
            let err = file(&format!("[policy]\nworkers = [\"root\", \"{entry}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("/etc/cq/cq.toml:2: policy.workers: "),
                "{entry}: {err}"
            );
        }
        assert!(file("[policy]\nworkers = [\"root@10.0.0.7\", \"cq@::1\", \"b\"]\n").is_ok());
    }

    #[test]
    fn the_shipped_example_is_accepted_by_both_programs() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/cq.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // Every commented-out option too: uncommenting one must not break the file.
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") => rest.split(" # ").next().unwrap_or(rest),
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        for text in [text, uncommented] {
            let file = ConfigFile::parse(path.clone(), text).unwrap();
            for (section, command, argv) in [
                (
                    Section::Server,
                    crate::server_args::Args::command(),
                    vec!["cq_server"],
                ),
                (
                    Section::Client,
                    crate::client_run::Args::command(),
                    vec!["cq_client", "--", "true"],
                ),
                (
                    Section::Worker,
                    crate::worker_run::Args::command(),
                    vec!["cq_worker"],
                ),
            ] {
                let given = command.clone().get_matches_from(argv);
                let executor = |id: &str| crate::executor_args::EXECUTOR_OPTIONS.contains(&id);
                let allowed = |id: &str| match section {
                    Section::Server => {
                        !crate::server_args::NOT_IN_CONFIG.contains(&id) && !executor(id)
                    }
                    Section::Client => crate::client_run::CONFIG_OPTIONS.contains(&id),
                    Section::Worker => id != "config" && !executor(id),
                    Section::Executor => executor(id),
                };
                file.arguments(section, &command, &given, allowed)
                    .unwrap_or_else(|e| panic!("{e}"));
                if section != Section::Client {
                    file.arguments(Section::Executor, &command, &given, executor)
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            }
            assert!(file.jobs().env.as_ref().unwrap().contains_key("PATH"));
        }
    }

    #[test]
    fn the_policy_section_becomes_the_submit_policy() {
        let file = file(
            "[policy]\nusers = [\"alice\"]\nadmins = [\"carol\"]\nenv_allow = [\"LD_LIBRARY_PATH\"]\n",
        )
        .unwrap();
        let policy = file.policy(false);
        assert_eq!(policy.users, ["alice"]);
        assert_eq!(policy.admins, ["carol"]);
        assert!(!policy.allow_root);
        assert!(!policy.merge_across_users);
        assert!(file.policy(true).allow_root);
        assert_eq!(policy.env_allow, ["LD_LIBRARY_PATH"]);
    }

    #[test]
    fn a_configured_deny_list_adds_to_the_loader_variables() {
        use cq_core::{AuthMethod, CommandJob, Identity};
        let policy = file("[policy]\nenv_deny = [\"PYTHON*\"]\n")
            .unwrap()
            .policy(false);
        let who = Identity {
            uid: 1000,
            gid: 1000,
            user: Some("alice".into()),
            host: None,
            method: AuthMethod::Local,
            principal: None,
        };
        for name in ["LD_PRELOAD", "PYTHONPATH"] {
            let job = CommandJob::new(["true"]).with_env(name, "x");
            assert!(policy.check_job(&who, &job).is_err(), "{name} passed");
        }
    }
}
