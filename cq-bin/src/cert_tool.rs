//! `cq_server tls ...`: make, and revoke, the certificates mutual TLS needs, without openssl.

use std::path::PathBuf;

use clap::Subcommand;
use cq_transport_tls::{CertError, Existing, init_ca_and_server, issue_client, revoke_client};

/// Certificate tooling for `--auth tls`.
#[derive(Clone, Debug, Subcommand)]
pub enum TlsCommand {
    /// Create a CA and a server certificate in DIR (ca.pem, ca.key, server.pem, server.key).
    Init {
        /// Directory for the files (created mode 0700; an existing one must be yours and
        /// writable by nobody else).
        #[arg(default_value = crate::auth_args::DEFAULT_TLS_DIR)]
        dir: PathBuf,
        /// A name clients use to reach the server (DNS name or IP address); repeatable.
        #[arg(long = "host", required = true, value_name = "NAME")]
        hosts: Vec<String>,
        /// Replace the server's certificate and key; an existing CA is kept (the client
        /// certificates it signed stay valid).
        #[arg(long)]
        force: bool,
        /// With --force: make a new CA too (every client certificate must then be issued
        /// again).
        #[arg(long, requires = "force")]
        new_ca: bool,
    },
    /// Issue a client certificate for NAME (a local user name on the server, or a name the
    /// server's --tls-user-map maps to one), signed by the CA in --dir.
    Client {
        /// The certificate's subject common name (letters, digits, '.', '_', '-', '@').
        name: String,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = crate::auth_args::DEFAULT_TLS_DIR)]
        dir: PathBuf,
        /// Directory for NAME.pem and NAME.key [default: --dir] (created mode 0700; an
        /// existing one must be yours and writable by nobody else).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Revoke a client certificate: add it to the revocation list DIR/crl.pem, which
    /// cq_server --tls-crl reads (again on SIGHUP).
    Revoke {
        /// The certificate to revoke (NAME.pem).
        cert: PathBuf,
        /// Directory holding ca.pem and ca.key (and crl.pem).
        #[arg(long, default_value = crate::auth_args::DEFAULT_TLS_DIR)]
        dir: PathBuf,
    },
}

/// Runs a tooling command and returns what to tell the user.
///
/// # Errors
///
/// [`CertError`] saying which file or step failed.
pub fn run(command: TlsCommand) -> Result<String, CertError> {
    match command {
        TlsCommand::Init {
            dir,
            hosts,
            force,
            new_ca,
        } => {
            let existing = match (force, new_ca) {
                (false, _) => Existing::Refuse,
                (true, false) => Existing::KeepCa,
                (true, true) => Existing::ReplaceCa,
            };
            let files = init_ca_and_server(&dir, &hosts, existing)?;
            let what = if files.kept_ca {
                format!(
                    "kept the CA {} and made {} and {} anew",
                    files.ca_cert.display(),
                    files.cert.display(),
                    files.key.display()
                )
            } else {
                format!(
                    "created {}, {} (keep it safe), {} and {}",
                    files.ca_cert.display(),
                    files.ca_key.display(),
                    files.cert.display(),
                    files.key.display()
                )
            };
            Ok(format!(
                "{what}\ncopy {} to every client; issue client certificates with: cq_server tls client NAME --dir {}",
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
        TlsCommand::Revoke { cert, dir } => {
            let crl = revoke_client(&dir, &cert)?;
            Ok(format!(
                "revoked {}: {} lists it; a cq_server started with --tls-crl {} refuses it once it reloads (SIGHUP, systemctl reload cq_server)",
                cert.display(),
                crl.display(),
                crl.display()
            ))
        }
    }
}
