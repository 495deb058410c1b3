//! The authentication options both binaries share.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Where TLS files live unless options say otherwise.
pub const DEFAULT_TLS_DIR: &str = "/etc/cq/tls";

/// How requests and replies are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthKind {
    /// MUNGE credentials (shared key on all hosts; needs munged).
    Munge,
    /// Mutual TLS (client certificates signed by the cq CA).
    Tls,
    /// This host only, over a Unix socket (--socket): the kernel says who connected, so
    /// neither munged nor certificates are needed.
    Local,
}

/// `--auth` and the MUNGE and TLS options.
#[derive(Clone, Debug, Args)]
pub struct AuthArgs {
    /// Authentication method; both ends must use the same.
    #[arg(long, value_enum, default_value_t = AuthKind::Munge)]
    pub auth: AuthKind,
    /// munged's socket [default: libmunge's, usually /run/munge/munge.socket.2].
    #[arg(long, value_name = "PATH")]
    pub munge_socket: Option<PathBuf>,
    /// CA certificate (PEM) for --auth tls [default: /etc/cq/tls/ca.pem].
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This end's certificate (PEM) for --auth tls (each binary says its default).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This end's private key (PEM) for --auth tls (each binary says its default).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Unix socket for this host's clients (cq_server serves it, next to TCP unless --auth
    /// local; cq_client connects to it) [default with --auth local: /run/cq/cq.sock as
    /// root, else $XDG_RUNTIME_DIR/cq/cq.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// The three TLS files of one end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate.
    pub ca: PathBuf,
    /// This end's certificate.
    pub cert: PathBuf,
    /// This end's key.
    pub key: PathBuf,
}

impl AuthArgs {
    /// These options as command-line arguments, to hand them to another cq process.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--auth".into()];
        args.push(match self.auth {
            AuthKind::Munge => "munge".into(),
            AuthKind::Tls => "tls".into(),
            AuthKind::Local => "local".into(),
        });
        for (option, value) in [
            ("--socket", &self.socket),
            ("--munge-socket", &self.munge_socket),
            ("--tls-ca", &self.tls_ca),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
        ] {
            if let Some(value) = value {
                args.push(option.into());
                args.push(value.clone().into_os_string());
            }
        }
        args
    }

    /// A client of the server at `host`:`port` with MUNGE credentials from `--munge-socket`,
    /// which believes only replies from a server running as one of `server_uids`.
    #[cfg(feature = "munge")]
    pub fn munge_client(
        &self,
        host: &str,
        port: u16,
        server_uids: Vec<u32>,
    ) -> cq_core::Client<
        cq_transport_tcp::TcpConnector,
        cq_auth::munge::MungeCredentialSource,
        cq_auth::munge::MungeAuthenticator,
    > {
        use cq_auth::munge::{MungeAuthenticator, MungeCredentialSource, MungeSocket};
        let socket = self
            .munge_socket
            .clone()
            .map_or_else(MungeSocket::default_socket, MungeSocket::at);
        cq_core::Client::new(
            cq_transport_tcp::TcpConnector::new(host, port),
            MungeCredentialSource::new(socket.clone())
                .inline()
                .seal_keys_for(server_uids.clone()),
            MungeAuthenticator::new(socket)
                .allow_only_uids(server_uids)
                .without_user_names()
                .inline(),
        )
    }

    /// A mutual-TLS connector to `host`:`port` with `role`'s files, checking that the
    /// server's certificate names `server_name` (default: `host`); the error says what is
    /// wrong with the files.
    pub fn tls_connector(
        &self,
        role: &str,
        host: &str,
        port: u16,
        server_name: Option<&str>,
    ) -> Result<cq_transport_tls::TlsConnector, String> {
        let files = self.tls_files(role);
        let tls = cq_transport_tls::ClientTls::from_files(&files.ca, &files.cert, &files.key)
            .map_err(|e| e.to_string())?;
        cq_transport_tls::TlsConnector::new(host, port, server_name.unwrap_or(host), &tls)
            .map_err(|e| e.to_string())
    }

    /// The TLS files, with defaults for `role` (`"server"`, `"client"` or `"worker"`) in
    /// [`DEFAULT_TLS_DIR`].
    pub fn tls_files(&self, role: &str) -> TlsFiles {
        let dir = PathBuf::from(DEFAULT_TLS_DIR);
        TlsFiles {
            ca: self.tls_ca.clone().unwrap_or_else(|| dir.join("ca.pem")),
            cert: self
                .tls_cert
                .clone()
                .unwrap_or_else(|| dir.join(format!("{role}.pem"))),
            key: self
                .tls_key
                .clone()
                .unwrap_or_else(|| dir.join(format!("{role}.key"))),
        }
    }
}
