//! A small safe wrapper over libmunge: contexts, encode, decode. All of cq's `unsafe` code
//! lives in this file.
//!
//! Ownership rules of libmunge this wrapper enforces: the credential string from
//! `munge_encode` and the payload from `munge_decode` are malloc'd and ours to `free` (the
//! payload even when decoding fails, since libmunge fills it for expired, rewound and replayed
//! credentials); strings from `munge_ctx_get` / `munge_ctx_strerror` belong to the context.
//! Contexts are not thread-safe, so [`Context`] is neither `Send` nor `Sync` (it holds a raw
//! pointer) and each blocking call creates its own.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr;

use munge_sys as sys;

/// A libmunge error code, as kinds cq reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MungeErrorKind {
    /// The credential is not well formed (garbage, truncated, bad version/cipher/mac/...).
    BadCredential,
    /// The credential's TTL has passed.
    Expired,
    /// Made with another key (EMUNGE_CRED_INVALID).
    InvalidKey,
    /// Anything else libmunge reports.
    Other,
    /// Already decoded once.
    Replayed,
    /// Encoded in the future: the clocks disagree.
    Rewound,
    /// munged cannot be reached at the socket.
    Socket,
    /// munged did not answer in time.
    Timeout,
    /// A uid/gid restriction excludes the decoder.
    Unauthorized,
}

/// An error from libmunge, with its own explanation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (munge error {code})")]
pub struct MungeError {
    /// The kind.
    pub kind: MungeErrorKind,
    /// The raw `munge_err_t`.
    pub code: u32,
    /// libmunge's message.
    pub message: String,
}

/// What a valid credential says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) payload: Vec<u8>,
    /// Whether the payload crossed the network encrypted.
    pub(crate) encrypted: bool,
    /// When it was made (seconds since the epoch, the encoding host's clock) and for how
    /// many seconds it is valid, when libmunge says.
    pub(crate) lifetime: Option<(i64, u32)>,
}

/// Ciphers cq asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cipher {
    /// None: only for tests of what a verifier does with a clear payload.
    #[cfg_attr(not(test), allow(dead_code))]
    None,
    /// AES-128, which every munged supports.
    Aes128,
}

/// One libmunge context.
pub(crate) struct Context {
    raw: sys::munge_ctx_t,
}

impl Context {
    pub(crate) fn new() -> Result<Self, MungeError> {
        // SAFETY: munge_ctx_create has no preconditions; it returns NULL when out of memory.
        let raw = unsafe { sys::munge_ctx_create() };
        if raw.is_null() {
            return Err(error_from_code(sys::munge_err_EMUNGE_NO_MEMORY, None));
        }
        Ok(Self { raw })
    }

    /// Uses munged's socket at `path` instead of libmunge's compiled-in default.
    pub(crate) fn set_socket(&mut self, path: &CStr) -> Result<(), MungeError> {
        // SAFETY: self.raw is a live context; MUNGE_OPT_SOCKET takes exactly one
        // `const char *`, which libmunge copies before returning, so `path` need not outlive
        // the call.
        let rc = unsafe {
            sys::munge_ctx_set(
                self.raw,
                sys::munge_opt_MUNGE_OPT_SOCKET as c_int,
                path.as_ptr(),
            )
        };
        self.check(rc)
    }

    /// Sets the time to live of credentials this context encodes, in seconds.
    pub(crate) fn set_ttl(&mut self, seconds: c_int) -> Result<(), MungeError> {
        // SAFETY: self.raw is a live context; MUNGE_OPT_TTL takes exactly one `int`.
        let rc =
            unsafe { sys::munge_ctx_set(self.raw, sys::munge_opt_MUNGE_OPT_TTL as c_int, seconds) };
        self.check(rc)
    }

    /// Sets the cipher of credentials this context encodes, whatever munged's default.
    pub(crate) fn set_cipher(&mut self, cipher: Cipher) -> Result<(), MungeError> {
        let value = match cipher {
            Cipher::None => sys::munge_cipher_MUNGE_CIPHER_NONE,
            Cipher::Aes128 => sys::munge_cipher_MUNGE_CIPHER_AES128,
        };
        // SAFETY: self.raw is a live context; MUNGE_OPT_CIPHER_TYPE takes exactly one `int`
        // (a munge_cipher_t value).
        let rc = unsafe {
            sys::munge_ctx_set(
                self.raw,
                sys::munge_opt_MUNGE_OPT_CIPHER_TYPE as c_int,
                value as c_int,
            )
        };
        self.check(rc)
    }

    /// Whether the credential this context last decoded was encrypted.
    fn decoded_encrypted(&self) -> bool {
        let mut cipher: c_int = sys::munge_cipher_MUNGE_CIPHER_NONE as c_int;
        // SAFETY: self.raw is a live context; MUNGE_OPT_CIPHER_TYPE with get takes exactly one
        // `int *`, which points to a live local.
        let rc = unsafe {
            sys::munge_ctx_get(
                self.raw,
                sys::munge_opt_MUNGE_OPT_CIPHER_TYPE as c_int,
                &mut cipher as *mut c_int,
            )
        };
        rc == sys::munge_err_EMUNGE_SUCCESS
            && cipher != sys::munge_cipher_MUNGE_CIPHER_NONE as c_int
    }

    /// The encode time and time to live of the credential this context last decoded.
    fn decoded_lifetime(&self) -> Option<(i64, u32)> {
        let mut encoded: libc::time_t = 0;
        let mut ttl: c_int = 0;
        // SAFETY: self.raw is a live context; with get, MUNGE_OPT_ENCODE_TIME takes exactly one
        // `time_t *` and MUNGE_OPT_TTL exactly one `int *`, each pointing to a live local.
        let (rc_time, rc_ttl) = unsafe {
            (
                sys::munge_ctx_get(
                    self.raw,
                    sys::munge_opt_MUNGE_OPT_ENCODE_TIME as c_int,
                    &mut encoded as *mut libc::time_t,
                ),
                sys::munge_ctx_get(
                    self.raw,
                    sys::munge_opt_MUNGE_OPT_TTL as c_int,
                    &mut ttl as *mut c_int,
                ),
            )
        };
        (rc_time == sys::munge_err_EMUNGE_SUCCESS && rc_ttl == sys::munge_err_EMUNGE_SUCCESS)
            .then(|| (encoded, u32::try_from(ttl).unwrap_or(0)))
    }

    /// Makes credentials this context encodes decodable only by processes running as `uid`.
    pub(crate) fn set_uid_restriction(&mut self, uid: u32) -> Result<(), MungeError> {
        // SAFETY: self.raw is a live context; MUNGE_OPT_UID_RESTRICTION takes exactly one
        // `uid_t`, which is a 32-bit unsigned integer on the platforms libmunge supports.
        let rc = unsafe {
            sys::munge_ctx_set(
                self.raw,
                sys::munge_opt_MUNGE_OPT_UID_RESTRICTION as c_int,
                uid as libc::uid_t,
            )
        };
        self.check(rc)
    }

    /// The socket this context talks to (libmunge's default unless set).
    pub(crate) fn socket(&self) -> Option<String> {
        let mut path: *const c_char = ptr::null();
        // SAFETY: self.raw is a live context; MUNGE_OPT_SOCKET with get takes exactly one
        // `char **`, which libmunge points at a string owned by the context.
        let rc = unsafe {
            sys::munge_ctx_get(
                self.raw,
                sys::munge_opt_MUNGE_OPT_SOCKET as c_int,
                &mut path as *mut *const c_char,
            )
        };
        if rc != sys::munge_err_EMUNGE_SUCCESS || path.is_null() {
            return None;
        }
        // SAFETY: libmunge returned a non-null NUL-terminated string that lives as long as the
        // context, and we copy it before the context can change.
        Some(
            unsafe { CStr::from_ptr(path) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    /// Makes a credential carrying `payload`.
    pub(crate) fn encode(&self, payload: &[u8]) -> Result<Vec<u8>, MungeError> {
        let len = c_int::try_from(payload.len()).map_err(|_| MungeError {
            kind: MungeErrorKind::Other,
            code: sys::munge_err_EMUNGE_BAD_LENGTH,
            message: "payload too large".to_owned(),
        })?;
        let mut cred: *mut c_char = ptr::null_mut();
        // SAFETY: self.raw is a live context; `payload` is valid for `len` bytes for the whole
        // call; `cred` is a valid out-pointer.
        let rc = unsafe {
            sys::munge_encode(&mut cred, self.raw, payload.as_ptr().cast::<c_void>(), len)
        };
        let copied = if cred.is_null() {
            None
        } else {
            // SAFETY: libmunge set `cred` to a malloc'd NUL-terminated string (NULL was
            // checked above), valid until we free it below.
            let bytes = unsafe { CStr::from_ptr(cred) }.to_bytes().to_vec();
            // SAFETY: `cred` came from malloc inside libmunge, was copied above, and is freed
            // exactly once and never used again.
            unsafe { libc::free(cred.cast::<c_void>()) };
            Some(bytes)
        };
        self.check(rc)?;
        copied.ok_or_else(|| {
            error_from_code(
                sys::munge_err_EMUNGE_SNAFU,
                Some("libmunge returned no credential".into()),
            )
        })
    }

    /// Checks `credential` with munged and returns what it says. The return code is checked
    /// before anything else is used: libmunge also fills uid and payload for credentials it
    /// refuses.
    pub(crate) fn decode(&self, credential: &CStr) -> Result<Decoded, MungeError> {
        let mut payload: *mut c_void = ptr::null_mut();
        let mut len: c_int = 0;
        let mut uid: libc::uid_t = 0;
        let mut gid: libc::gid_t = 0;
        // SAFETY: self.raw is a live context; `credential` is NUL-terminated and outlives the
        // call; every out-pointer points to a live local of the type libmunge expects.
        let rc = unsafe {
            sys::munge_decode(
                credential.as_ptr(),
                self.raw,
                &mut payload,
                &mut len,
                &mut uid,
                &mut gid,
            )
        };
        let bytes = if payload.is_null() {
            Vec::new()
        } else {
            let n = usize::try_from(len).unwrap_or(0);
            // SAFETY: libmunge malloc'd `payload` with `len` valid bytes (plus a NUL), non-null
            // as checked above, valid until we free it below.
            let copy = unsafe { std::slice::from_raw_parts(payload.cast::<u8>(), n) }.to_vec();
            // SAFETY: `payload` came from malloc inside libmunge, whatever the return code; it
            // was copied above and is freed exactly once and never used again.
            unsafe { libc::free(payload) };
            copy
        };
        self.check(rc)?;
        Ok(Decoded {
            uid,
            gid,
            payload: bytes,
            encrypted: self.decoded_encrypted(),
            lifetime: self.decoded_lifetime(),
        })
    }

    fn check(&self, rc: sys::munge_err_t) -> Result<(), MungeError> {
        if rc == sys::munge_err_EMUNGE_SUCCESS {
            return Ok(());
        }
        // SAFETY: self.raw is a live context; the returned string (if any) is owned by it and
        // copied at once.
        let detail = unsafe {
            let text = sys::munge_ctx_strerror(self.raw);
            (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().into_owned())
        };
        Err(error_from_code(rc, detail))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: self.raw came from munge_ctx_create, is non-null and is destroyed only here.
        unsafe { sys::munge_ctx_destroy(self.raw) }
    }
}

fn error_from_code(code: sys::munge_err_t, detail: Option<String>) -> MungeError {
    let message = detail.unwrap_or_else(|| {
        // SAFETY: munge_strerror returns a static string for any code.
        let text = unsafe { sys::munge_strerror(code) };
        if text.is_null() {
            format!("munge error {code}")
        } else {
            // SAFETY: non-null, static, NUL-terminated.
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        }
    });
    let kind = match code {
        sys::munge_err_EMUNGE_SOCKET => MungeErrorKind::Socket,
        sys::munge_err_EMUNGE_TIMEOUT => MungeErrorKind::Timeout,
        sys::munge_err_EMUNGE_BAD_CRED
        | sys::munge_err_EMUNGE_BAD_VERSION
        | sys::munge_err_EMUNGE_BAD_CIPHER
        | sys::munge_err_EMUNGE_BAD_MAC
        | sys::munge_err_EMUNGE_BAD_ZIP
        | sys::munge_err_EMUNGE_BAD_REALM
        | sys::munge_err_EMUNGE_BAD_LENGTH => MungeErrorKind::BadCredential,
        sys::munge_err_EMUNGE_CRED_INVALID => MungeErrorKind::InvalidKey,
        sys::munge_err_EMUNGE_CRED_EXPIRED => MungeErrorKind::Expired,
        sys::munge_err_EMUNGE_CRED_REWOUND => MungeErrorKind::Rewound,
        sys::munge_err_EMUNGE_CRED_REPLAYED => MungeErrorKind::Replayed,
        sys::munge_err_EMUNGE_CRED_UNAUTHORIZED => MungeErrorKind::Unauthorized,
        _ => MungeErrorKind::Other,
    };
    MungeError {
        kind,
        code,
        message,
    }
}

/// Copies `path` into a C string for [`Context::set_socket`].
pub(crate) fn socket_cstring(path: &std::path::Path) -> Option<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).ok()
}
