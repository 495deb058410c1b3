//! `cq_server tls ...`: make the certificates mutual TLS needs, without openssl.

use std::path::PathBuf;

use clap::Subcommand;
use cq_transport_tls::{CertError, init_ca_and_server, issue_client};

/// Certificate tooling for `--auth tls`.
#[derive(Clone, Debug, Subcommand)]
pub enum TlsCommand {
    /// Create a CA and a server certificate in DIR (ca.pem, ca.key, server.pem, server.key).
    Init {
        /// Directory for the files.
        #[arg(default_value = crate::auth_args::DEFAULT_TLS_DIR)]
        dir: PathBuf,
        /// A name clients use to reach the server (DNS name or IP address); repeatable.
        #[arg(long = "host", required = true, value_name = "NAME")]
        hosts: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate for NAME (a local user name on the server, or a name the
    /// server's --tls-user-map maps to one), signed by the CA in --dir.
    Client {
        /// The certificate's subject common name.
        name: String,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = crate::auth_args::DEFAULT_TLS_DIR)]
        dir: PathBuf,
        /// Directory for NAME.pem and NAME.key [default: --dir].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a tooling command and returns what to tell the user.
///
/// # Errors
///
/// [`CertError`] saying which file or step failed.
pub fn run(command: TlsCommand) -> Result<String, CertError> {
    match command {
        TlsCommand::Init { dir, hosts, force } => {
            let files = init_ca_and_server(&dir, &hosts, force)?;
            Ok(format!(
                "created {}, {} (keep it safe), {} and {}\n\
                 copy {} to every client; issue client certificates with: cq_server tls client NAME --dir {}",
                files.ca_cert.display(),
                files.ca_key.display(),
                files.cert.display(),
                files.key.display(),
                files.ca_cert.display(),
                dir.display()
            ))
        }
        TlsCommand::Client {
            name,
            dir,
            out,
            force,
        } => {
            let out = out.unwrap_or_else(|| dir.clone());
            let files = issue_client(&dir, &name, &out, force)?;
            Ok(format!(
                "created {} and {}; on the client pass --auth tls --tls-ca ca.pem --tls-cert {} --tls-key {}",
                files.cert.display(),
                files.key.display(),
                files.cert.display(),
                files.key.display()
            ))
        }
    }
}
