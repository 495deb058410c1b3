//! Certificate tooling: a private CA, a server certificate, client certificates and their
//! revocation, so that a site needs no openssl commands.
//!
//! Keys are secrets, so files are written the careful way: into a directory only the invoking
//! user can write (created 0700 when missing), each file first as a new temporary file of its
//! own (never through an existing file or a symlink), then put in place atomically: linked
//! to its name only if that name is free, or, when replacing was asked for, renamed over it
//! (which replaces a symlink itself, never its target).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The CA is valid for 10 years, server and client certificates for 2.
const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 730;

/// A revocation list is valid for a year (reissued at each revocation).
const CRL_DAYS: i64 = 365;

/// The revocation list `revoke_client` maintains in the CA's directory.
pub const CRL_FILE: &str = "crl.pem";

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file exists and replacing it was not asked for.
    #[error("{0} exists; pass --force to replace it")]
    Exists(PathBuf),
    /// The directory could let others replace or read the keys.
    #[error("{path}: {reason}; use a directory only you can write")]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate name cq will not use as a file name.
    #[error(
        "{0:?} is not a usable certificate name: use letters, digits, '.', '_', '-' and '@', not starting with '.' or '-'"
    )]
    BadName(String),
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
    /// A certificate or revocation list could not be read.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
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
    /// Whether an existing CA was kept (and only the server's certificate made anew).
    pub kept_ca: bool,
}

/// The files [`issue_client`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFiles {
    /// `NAME.pem`.
    pub cert: PathBuf,
    /// `NAME.key`.
    pub key: PathBuf,
}

/// What [`init_ca_and_server`] does with files that exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Existing {
    /// Refuse to touch any.
    Refuse,
    /// Keep the CA (every client certificate it signed stays valid); replace the server's.
    KeepCa,
    /// Replace everything, the CA too: every client certificate must be issued again.
    ReplaceCa,
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Rcgen { what, source }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A day of slack for hosts whose clocks run a little behind.
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(days);
}

/// Checks that `name` can be a certificate's name and a file name: no path, no dot files.
///
/// # Errors
///
/// [`CertError::BadName`].
pub fn check_name(name: &str) -> Result<(), CertError> {
    let usable = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if usable {
        Ok(())
    } else {
        Err(CertError::BadName(name.to_owned()))
    }
}

/// Makes `dir` (mode 0700) if it is missing; an existing one must belong to this user and be
/// writable by nobody else, or the files written there could be replaced or opened by them.
fn private_dir(dir: &Path) -> Result<(), CertError> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    let meta = dir.metadata().map_err(io_err(dir))?;
    let unsafe_dir = |reason: String| CertError::UnsafeDir {
        path: dir.to_owned(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory".to_owned()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "it belongs to uid {}, not to you (uid {me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "others can write it (mode {:o})",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// Writes `contents` as a new file and puts it at `path`: only if nothing is there, or in
/// place of what is there when `replace` (atomically, without following a symlink).
fn put(path: &Path, contents: &[u8], mode: u32, replace: bool) -> Result<(), CertError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let (temp, mut file) = (0u32..)
        .map(|n| dir.join(format!(".{name}.new-{}-{n}", std::process::id())))
        .find_map(|temp| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temp)
                .ok()
                .map(|file| (temp, file))
        })
        .ok_or_else(|| CertError::Io {
            path: dir.to_owned(),
            source: std::io::Error::other("cannot create a temporary file"),
        })?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&temp));
    drop(file);
    let placed = written.and_then(|()| {
        if replace {
            fs::rename(&temp, path).map_err(io_err(path))
        } else {
            // A hard link is made only if the name is free, and never follows a symlink.
            match fs::hard_link(&temp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(CertError::Exists(path.to_owned()))
                }
                Err(e) => Err(io_err(path)(e)),
            }
        }
    });
    let _ = fs::remove_file(&temp);
    placed
}

fn ca_params() -> CertificateParams {
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
    ca
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(io_err(path))
}

/// Creates a CA and a server certificate for `hosts` (DNS names or IP addresses, the first one
/// also the subject CN) in `dir`: `ca.pem`, `ca.key`, `server.pem`, `server.key`. What
/// happens to files that exist is `existing`'s to say.
///
/// # Errors
///
/// [`CertError::Exists`] when a file exists and `existing` refuses; [`CertError::UnsafeDir`]
/// when others could write `dir`; I/O and generation errors otherwise.
pub fn init_ca_and_server(
    dir: &Path,
    hosts: &[String],
    existing: Existing,
) -> Result<ServerFiles, CertError> {
    let mut files = ServerFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        kept_ca: false,
    };
    private_dir(dir)?;
    let present = [&files.ca_cert, &files.ca_key, &files.cert, &files.key]
        .into_iter()
        .find(|p| p.symlink_metadata().is_ok());
    if let (Some(path), Existing::Refuse) = (present, existing) {
        return Err(CertError::Exists(path.clone()));
    }
    let have_ca = files.ca_key.exists() && files.ca_cert.exists();
    let (issuer, new_ca) = if have_ca && existing == Existing::KeepCa {
        files.kept_ca = true;
        let ca_key =
            KeyPair::from_pem(&read(&files.ca_key)?).map_err(rcgen_err("read the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&read(&files.ca_cert)?, ca_key)
            .map_err(rcgen_err("read the CA certificate"))?;
        (issuer, None)
    } else {
        let ca_key = KeyPair::generate().map_err(rcgen_err("generate the CA key"))?;
        let ca = ca_params();
        let ca_cert = ca
            .self_signed(&ca_key)
            .map_err(rcgen_err("sign the CA certificate"))?;
        let pems = (ca_key.serialize_pem(), ca_cert.pem());
        (Issuer::new(ca, ca_key), Some(pems))
    };

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
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(rcgen_err("sign the server certificate"))?;

    let replace = existing != Existing::Refuse;
    if let Some((ca_key, ca_cert)) = new_ca {
        put(&files.ca_key, ca_key.as_bytes(), 0o600, replace)?;
        put(&files.ca_cert, ca_cert.as_bytes(), 0o644, replace)?;
    }
    put(
        &files.key,
        server_key.serialize_pem().as_bytes(),
        0o600,
        replace,
    )?;
    put(&files.cert, server_cert.pem().as_bytes(), 0o644, replace)?;
    Ok(files)
}

/// Issues a client certificate whose subject CN is `name`, signed by the CA in `ca_dir`,
/// written as `out_dir/NAME.pem` and `out_dir/NAME.key`.
///
/// # Errors
///
/// [`CertError::BadName`], [`CertError::Exists`] when a file exists and `force` is false,
/// [`CertError::UnsafeDir`]; I/O and generation errors otherwise (e.g. no CA in `ca_dir`).
pub fn issue_client(
    ca_dir: &Path,
    name: &str,
    out_dir: &Path,
    force: bool,
) -> Result<ClientFiles, CertError> {
    check_name(name)?;
    let files = ClientFiles {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
    };
    let ca_key =
        KeyPair::from_pem(&read(&ca_dir.join("ca.key"))?).map_err(rcgen_err("read the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_dir.join("ca.pem"))?, ca_key)
        .map_err(rcgen_err("read the CA certificate"))?;
    private_dir(out_dir)?;
    if !force
        && let Some(path) = [&files.cert, &files.key]
            .into_iter()
            .find(|p| p.symlink_metadata().is_ok())
    {
        return Err(CertError::Exists(path.clone()));
    }

    let key = KeyPair::generate().map_err(rcgen_err("generate the client key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, LEAF_DAYS);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_err("sign the client certificate"))?;

    put(&files.key, key.serialize_pem().as_bytes(), 0o600, force)?;
    put(&files.cert, cert.pem().as_bytes(), 0o644, force)?;
    Ok(files)
}

/// The serial numbers the revocation list at `path` revokes (none when there is no file).
///
/// # Errors
///
/// [`CertError::Parse`] when the file is not a PEM revocation list.
pub fn revoked_serials(path: &Path) -> Result<Vec<Vec<u8>>, CertError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = fs::read(path).map_err(io_err(path))?;
    let parse = |reason: String| CertError::Parse {
        path: path.to_owned(),
        reason,
    };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(&text).map_err(|e| parse(format!("not PEM: {e}")))?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents)
        .map_err(|e| parse(format!("not a revocation list: {e}")))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|revoked| revoked.raw_serial().to_vec())
        .collect())
}

/// Revokes the client certificate in `cert`: adds its serial number to `ca_dir/crl.pem`
/// (signed by the CA there), made anew with every serial revoked so far. Returns the
/// revocation list's path; the server reads it again on SIGHUP.
///
/// # Errors
///
/// When the certificate, the CA or the old list cannot be read, or the new one written.
pub fn revoke_client(ca_dir: &Path, cert: &Path) -> Result<PathBuf, CertError> {
    let text = fs::read(cert).map_err(io_err(cert))?;
    let parse = |reason: String| CertError::Parse {
        path: cert.to_owned(),
        reason,
    };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(&text).map_err(|e| parse(format!("not PEM: {e}")))?;
    let (_, parsed) = X509Certificate::from_der(&pem.contents)
        .map_err(|e| parse(format!("not a certificate: {e}")))?;
    let serial = parsed.raw_serial().to_vec();
    let crl_path = ca_dir.join(CRL_FILE);
    let mut serials = revoked_serials(&crl_path)?;
    if !serials.contains(&serial) {
        serials.push(serial);
    }
    let ca_key =
        KeyPair::from_pem(&read(&ca_dir.join("ca.key"))?).map_err(rcgen_err("read the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_dir.join("ca.pem"))?, ca_key)
        .map_err(rcgen_err("read the CA certificate"))?;
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(CRL_DAYS),
        crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or(1)),
        issuing_distribution_point: None,
        revoked_certs: serials
            .into_iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .map_err(rcgen_err("sign the revocation list"))?;
    let pem = crl.pem().map_err(rcgen_err("encode the revocation list"))?;
    put(&crl_path, pem.as_bytes(), 0o644, true)?;
    Ok(crl_path)
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
        let files = init_ca_and_server(
            dir.path(),
            &["buildhost".into(), "192.0.2.1".into()],
            Existing::Refuse,
        )
        .unwrap();
        assert_eq!((mode(&files.ca_key), mode(&files.key)), (0o600, 0o600));
        assert_eq!((mode(&files.ca_cert), mode(&files.cert)), (0o644, 0o644));

        let before = fs::read(&files.ca_key).unwrap();
        let err =
            init_ca_and_server(dir.path(), &["buildhost".into()], Existing::Refuse).unwrap_err();
        assert!(matches!(err, CertError::Exists(_)), "{err}");
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
    fn force_keeps_the_ca_unless_a_new_one_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let files = init_ca_and_server(dir.path(), &["a".into()], Existing::Refuse).unwrap();
        let ca = fs::read(&files.ca_key).unwrap();
        let server_key = fs::read(&files.key).unwrap();
        let kept = init_ca_and_server(dir.path(), &["b".into()], Existing::KeepCa).unwrap();
        assert!(kept.kept_ca);
        assert_eq!(
            fs::read(&files.ca_key).unwrap(),
            ca,
            "the CA survives --force"
        );
        assert_ne!(fs::read(&files.key).unwrap(), server_key);
        init_ca_and_server(dir.path(), &["c".into()], Existing::ReplaceCa).unwrap();
        assert_ne!(fs::read(&files.ca_key).unwrap(), ca);
    }

    #[test]
    fn keys_are_never_written_through_what_someone_else_put_there() {
        let dir = tempfile::tempdir().unwrap();
        init_ca_and_server(dir.path(), &["a".into()], Existing::Refuse).unwrap();
        let out = tempfile::tempdir().unwrap();
        // Planted: a symlink where the key goes, pointing at a file of the attacker's.
        let stolen = out.path().join("stolen");
        fs::write(&stolen, "").unwrap();
        std::os::unix::fs::symlink(&stolen, out.path().join("vm1.key")).unwrap();
        assert!(matches!(
            issue_client(dir.path(), "vm1", out.path(), false),
            Err(CertError::Exists(_))
        ));
        issue_client(dir.path(), "vm1", out.path(), true).unwrap();
        assert_eq!(
            fs::read(&stolen).unwrap(),
            b"",
            "nothing was written through the link"
        );
        let key = out.path().join("vm1.key");
        assert!(key.symlink_metadata().unwrap().file_type().is_file());
        assert_eq!(mode(&key), 0o600);

        // A directory others may write is refused: they could swap or open the files.
        let open = tempfile::tempdir().unwrap();
        fs::set_permissions(open.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            issue_client(dir.path(), "vm2", open.path(), false),
            Err(CertError::UnsafeDir { .. })
        ));
        // A missing directory is made private.
        let fresh = out.path().join("new");
        issue_client(dir.path(), "vm3", &fresh, false).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn names_that_are_paths_are_refused() {
        for bad in ["../escaped", "a/b", ".hidden", "-rf", "", "x y"] {
            assert!(
                matches!(check_name(bad), Err(CertError::BadName(_))),
                "{bad:?}"
            );
        }
        for good in ["portage", "vm-1.example", "build@host"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_revoked_certificate_is_in_the_list() {
        let dir = tempfile::tempdir().unwrap();
        init_ca_and_server(dir.path(), &["a".into()], Existing::Refuse).unwrap();
        let one = issue_client(dir.path(), "vm1", dir.path(), false).unwrap();
        let two = issue_client(dir.path(), "vm2", dir.path(), false).unwrap();
        let crl = revoke_client(dir.path(), &one.cert).unwrap();
        revoke_client(dir.path(), &two.cert).unwrap();
        assert_eq!(revoked_serials(&crl).unwrap().len(), 2);
        revoke_client(dir.path(), &two.cert).unwrap();
        assert_eq!(revoked_serials(&crl).unwrap().len(), 2, "once is enough");
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
