//! Certificate tooling: a private CA, a server certificate and client certificates, so that a
//! site needs no openssl commands. Private keys are written mode 0600; existing files are
//! never overwritten unless asked.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The CA is valid for 10 years, server and client certificates for 2.
const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 730;

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file exists and overwriting was not asked for.
    #[error("{0} exists; pass --force to replace it")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Generating or parsing a certificate or key failed.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: rcgen::Error,
    },
}

/// The files [`init_ca_and_server`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    /// `ca.pem`: give it to every client and keep it on the server.
    pub ca_cert: PathBuf,
    /// `ca.key`: signs client certificates; keep it safe (it need not stay on the server).
    pub ca_key: PathBuf,
    /// `server.pem`.
    pub cert: PathBuf,
    /// `server.key`.
    pub key: PathBuf,
}

/// The files [`issue_client`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFiles {
    /// `NAME.pem`.
    pub cert: PathBuf,
    /// `NAME.key`.
    pub key: PathBuf,
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Rcgen { what, source }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A day of slack for hosts whose clocks run a little behind.
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(days);
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), CertError> {
    match paths.iter().find(|p| p.exists()) {
        Some(existing) if !force => Err(CertError::Exists(existing.to_path_buf())),
        _ => Ok(()),
    }
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // The mode above applies only to new files: a replaced key must not keep looser bits.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

/// Creates a CA and a server certificate for `hosts` (DNS names or IP addresses, the first one
/// also the subject CN) in `dir`: `ca.pem`, `ca.key`, `server.pem`, `server.key`.
///
/// # Errors
///
/// [`CertError::Exists`] when one of the files exists and `force` is false; I/O and
/// generation errors otherwise.
pub fn init_ca_and_server(
    dir: &Path,
    hosts: &[String],
    force: bool,
) -> Result<ServerFiles, CertError> {
    let files = ServerFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    refuse_existing(
        &[&files.ca_cert, &files.ca_key, &files.cert, &files.key],
        force,
    )?;
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;

    let ca_key = KeyPair::generate().map_err(rcgen_err("generate the CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "cq CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, CA_DAYS);
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(rcgen_err("sign the CA certificate"))?;

    let server_key = KeyPair::generate().map_err(rcgen_err("generate the server key"))?;
    let mut server =
        CertificateParams::new(hosts.to_vec()).map_err(rcgen_err("use the server names"))?;
    server.distinguished_name = DistinguishedName::new();
    server.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map_or("cq server", String::as_str),
    );
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server, LEAF_DAYS);
    let issuer = Issuer::new(ca, &ca_key);
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(rcgen_err("sign the server certificate"))?;

    write(&files.ca_key, &ca_key.serialize_pem(), 0o600)?;
    write(&files.ca_cert, &ca_cert.pem(), 0o644)?;
    write(&files.key, &server_key.serialize_pem(), 0o600)?;
    write(&files.cert, &server_cert.pem(), 0o644)?;
    Ok(files)
}

/// Issues a client certificate whose subject CN is `name`, signed by the CA in `ca_dir`,
/// written as `out_dir/NAME.pem` and `out_dir/NAME.key`.
///
/// # Errors
///
/// [`CertError::Exists`] when a file exists and `force` is false; I/O and generation errors
/// otherwise (e.g. no CA in `ca_dir`).
pub fn issue_client(
    ca_dir: &Path,
    name: &str,
    out_dir: &Path,
    force: bool,
) -> Result<ClientFiles, CertError> {
    let files = ClientFiles {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
    };
    refuse_existing(&[&files.cert, &files.key], force)?;
    let read =
        |path: PathBuf| fs::read_to_string(&path).map_err(|source| CertError::Io { path, source });
    let ca_key =
        KeyPair::from_pem(&read(ca_dir.join("ca.key"))?).map_err(rcgen_err("read the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&read(ca_dir.join("ca.pem"))?, ca_key)
        .map_err(rcgen_err("read the CA certificate"))?;

    let key = KeyPair::generate().map_err(rcgen_err("generate the client key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, LEAF_DAYS);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_err("sign the client certificate"))?;

    fs::create_dir_all(out_dir).map_err(|source| CertError::Io {
        path: out_dir.to_owned(),
        source,
    })?;
    write(&files.key, &key.serialize_pem(), 0o600)?;
    write(&files.cert, &cert.pem(), 0o644)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_private_and_files_are_never_overwritten_silently() {
        let dir = tempfile::tempdir().unwrap();
        let files =
            init_ca_and_server(dir.path(), &["buildhost".into(), "192.0.2.1".into()], false)
                .unwrap();
        assert_eq!((mode(&files.ca_key), mode(&files.key)), (0o600, 0o600));
        assert_eq!((mode(&files.ca_cert), mode(&files.cert)), (0o644, 0o644));

        let before = fs::read(&files.ca_key).unwrap();
        let err = init_ca_and_server(dir.path(), &["buildhost".into()], false).unwrap_err();
        assert!(
            matches!(err, CertError::Exists(ref p) if p == &files.ca_cert),
            "{err}"
        );
        assert_eq!(
            fs::read(&files.ca_key).unwrap(),
            before,
            "a refused init changes nothing"
        );

        let client = issue_client(dir.path(), "vm1", dir.path(), false).unwrap();
        assert_eq!(mode(&client.key), 0o600);
        assert!(matches!(
            issue_client(dir.path(), "vm1", dir.path(), false),
            Err(CertError::Exists(_))
        ));
        // Replacing with --force keeps the key private even if someone loosened it.
        fs::set_permissions(&client.key, fs::Permissions::from_mode(0o644)).unwrap();
        issue_client(dir.path(), "vm1", dir.path(), true).unwrap();
        assert_eq!(mode(&client.key), 0o600);
    }

    #[test]
    fn a_client_needs_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue_client(dir.path(), "vm1", dir.path(), false).unwrap_err();
        assert!(
            matches!(err, CertError::Io { ref path, .. } if path.ends_with("ca.key")),
            "{err}"
        );
    }
}
