//! The Portage workflow: `cq-emerge` on a VM, `cq-emerge-build` on the build host.
//!
//! - `plan.rs`: reading `emerge --pretend --verbose` (packages, order, flags).
//! - `run.rs`: cq-emerge: one build job per package, installs in merge order.
//! - `build.rs`: cq-emerge-build: one `emerge --buildpkgonly` and its `BUILD_ID` as a result.

pub mod build;
pub mod plan;
pub mod run;

use std::path::PathBuf;

use crate::config_file::EmergeSection;
pub use run::{Options, USAGE};

/// What the command line asked for besides [`Options`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cli {
    /// The options (before the configuration file fills what is not given).
    pub options: Options,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--server HOST`.
    pub server: Option<String>,
    /// `--help`.
    pub help: bool,
    /// `--version`.
    pub version: bool,
}

/// Splits cq-emerge's own options from emerge's (see [`USAGE`]); `-p` is taken out of
/// clusters of short emerge options (`-pv` is `--pretend` and `-v`).
///
/// # Errors
///
/// An option of cq-emerge without its value, or a bad number.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Cli, String> {
    let mut cli = Cli::default();
    let mut args = args.into_iter();
    let mut jobs = None;
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value)),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline {
                Some(v) => Ok(v.to_owned()),
                None => args
                    .next()
                    .ok_or_else(|| format!("{what} needs a value (see cq-emerge --help)")),
            }
        };
        match name.as_str() {
            "--pretend" => cli.options.pretend = true,
            "--dry-run-install" => cli.options.dry_run_install = true,
            "--jobs" | "-j" => jobs = Some(value(&name)?),
            "--server" => cli.server = Some(value(&name)?),
            "--client-arg" => cli.options.client_args.push(value(&name)?),
            "--config" => cli.config = Some(PathBuf::from(value(&name)?)),
            "--help" => cli.help = true,
            "--version" => cli.version = true,
            "--" => cli.options.emerge_args.extend(args.by_ref()),
            _ if arg.starts_with("-j") && arg.len() > 2 && !arg.starts_with("--") => {
                jobs = Some(arg[2..].to_owned());
            }
            _ if arg.starts_with('-') && !arg.starts_with("--") && arg.contains('p') => {
                cli.options.pretend = true;
                let rest: String = arg.chars().filter(|c| *c != 'p').collect();
                if rest != "-" {
                    cli.options.emerge_args.push(rest);
                }
            }
            _ => cli.options.emerge_args.push(arg),
        }
    }
    if let Some(jobs) = jobs {
        let n: usize = jobs
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("--jobs {jobs}: give a number above 0"))?;
        cli.options.jobs = Some(n);
    }
    Ok(cli)
}

/// Completes `cli`'s options from `[emerge]` and the defaults; `lookup` gives this
/// machine's Portage variables (`pass_variables`).
pub fn complete(
    mut cli: Cli,
    section: &EmergeSection,
    lookup: impl Fn(&str) -> Option<String>,
) -> Options {
    let mut options = std::mem::take(&mut cli.options);
    let mut client_args = section.client_options.clone().unwrap_or_default();
    if let Some(config) = &cli.config {
        client_args.push(format!("--config={}", config.display()));
    }
    if let Some(server) = &cli.server {
        client_args.extend(["-h".to_owned(), server.clone()]);
    }
    client_args.append(&mut options.client_args);
    options.client_args = client_args;
    options.jobs = options.jobs.or(section.jobs);
    options.build_command = section
        .build_command
        .clone()
        .unwrap_or_else(|| "cq-emerge-build".to_owned());
    options.install_options = section
        .install_options
        .clone()
        .unwrap_or_else(|| vec!["--usepkgonly".to_owned()]);
    options.client = section.client.clone().unwrap_or_else(default_client);
    options.pass_variables = section
        .pass_variables
        .iter()
        .flatten()
        .filter_map(|name| Some((name.clone(), lookup(name)?)))
        .filter(|(_, value)| !value.is_empty())
        .collect();
    options
}

/// cq_client beside this program (as installed), else the one in `PATH`.
fn default_client() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("cq_client")))
        .filter(|client| client.is_file())
        .unwrap_or_else(|| PathBuf::from("cq_client"))
}

/// This machine's value of a Portage variable (`portageq envvar NAME`).
pub fn portage_variable(name: &str) -> Option<String> {
    let out = std::process::Command::new("portageq")
        .args(["envvar", name])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Cli {
        parse_args(args.iter().map(|s| (*s).to_owned())).unwrap()
    }

    #[test]
    fn own_options_are_taken_out_and_the_rest_goes_to_emerge() {
        let cli = parsed(&[
            "-uDNpv",
            "--jobs",
            "3",
            "--with-bdeps=y",
            "--server",
            "build1",
            "--client-arg=--auth=tls",
            "@world",
        ]);
        assert!(cli.options.pretend);
        assert_eq!(cli.options.jobs, Some(3));
        assert_eq!(cli.server.as_deref(), Some("build1"));
        assert_eq!(cli.options.client_args, ["--auth=tls"]);
        assert_eq!(
            cli.options.emerge_args,
            ["-uDNv", "--with-bdeps=y", "@world"]
        );
        let cli = parsed(&["-j2", "-p", "app-misc/hello"]);
        assert_eq!(cli.options.jobs, Some(2));
        assert!(cli.options.pretend);
        assert_eq!(cli.options.emerge_args, ["app-misc/hello"]);
        assert!(parse_args(["--jobs".to_owned(), "0".to_owned()]).is_err());
        assert!(parse_args(["--server".to_owned()]).is_err());
    }

    #[test]
    fn the_configuration_fills_what_the_command_line_leaves() {
        let section = EmergeSection {
            build_command: Some("/usr/bin/cq-emerge-build".into()),
            install_options: Some(vec!["--getbinpkgonly".into()]),
            jobs: Some(4),
            pass_variables: Some(vec!["CFLAGS".into(), "UNSET".into()]),
            client: None,
            client_options: Some(vec!["--auth=tls".into()]),
        };
        let cli = parsed(&["--server", "b", "--jobs=2", "x/y"]);
        let options = complete(cli, &section, |name| {
            (name == "CFLAGS").then(|| "-O2 -march=x86-64-v3".to_owned())
        });
        assert_eq!(options.jobs, Some(2));
        assert_eq!(options.client_args, ["--auth=tls", "-h", "b"]);
        assert_eq!(options.install_options, ["--getbinpkgonly"]);
        assert_eq!(
            options.pass_variables,
            [("CFLAGS".to_owned(), "-O2 -march=x86-64-v3".to_owned())]
        );
    }
}
