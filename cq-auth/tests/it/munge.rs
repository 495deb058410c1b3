use std::net::SocketAddr;

use cq_auth::munge::{MungeAuthenticator, MungeCredentialSource, MungeSocket, PrivateMunged};
use cq_core::{AuthError, AuthMethod, Authenticator, CredentialSource, PeerInfo, ReplyKey};
use tempfile::TempDir;

fn munged() -> (TempDir, PrivateMunged) {
    let dir = tempfile::tempdir().unwrap();
    let munged = PrivateMunged::start_in(dir.path()).unwrap();
    (dir, munged)
}

fn peer() -> PeerInfo {
    let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    PeerInfo::socket(addr, "127.0.0.1:48005".parse().unwrap())
}

#[tokio::test]
async fn a_credential_proves_the_uid_for_its_message_once() {
    let (_dir, munged) = munged();
    let source = MungeCredentialSource::new(munged.socket());
    let verifier = MungeAuthenticator::new(munged.socket());
    let credential = source.credential_for(b"submit: make").await.unwrap();

    let identity = verifier
        .verify(b"submit: make", &credential, &peer())
        .await
        .unwrap();
    assert_eq!(identity.uid, nix::unistd::getuid().as_raw());
    assert_eq!(identity.gid, nix::unistd::getgid().as_raw());
    assert_eq!(identity.method, AuthMethod::Munge);
    assert_eq!(identity.host.as_deref(), Some("127.0.0.1"));

    let again = verifier
        .verify(b"submit: make", &credential, &peer())
        .await
        .unwrap_err();
    assert!(matches!(again, AuthError::Replayed(_)), "{again}");
}

#[tokio::test]
async fn a_credential_for_another_message_is_refused() {
    let (_dir, munged) = munged();
    let source = MungeCredentialSource::new(munged.socket());
    let verifier = MungeAuthenticator::new(munged.socket());
    let credential = source.credential_for(b"submit: true").await.unwrap();
    let err = verifier
        .verify(b"submit: rm -rf /", &credential, &peer())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Mismatch(_)), "{err}");
}

#[tokio::test]
async fn a_credential_from_another_key_is_refused() {
    let (_a, ours) = munged();
    let (_b, theirs) = munged();
    let credential = MungeCredentialSource::new(theirs.socket())
        .credential_for(b"m")
        .await
        .unwrap();
    let err = MungeAuthenticator::new(ours.socket())
        .verify(b"m", &credential, &peer())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuthError::Invalid(m) if m.contains("another MUNGE key")),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_and_missing_credentials_are_refused() {
    let (_dir, munged) = munged();
    let verifier = MungeAuthenticator::new(munged.socket());
    for bad in [&b""[..], b"MUNGE:garbage:", b"\0\0"] {
        let err = verifier
            .verify(b"m", &cq_core::Credential(bad.to_vec()), &peer())
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::Invalid(_)), "{bad:?}: {err}");
    }
}

#[tokio::test]
async fn uid_restriction_refuses_other_makers() {
    let (_dir, munged) = munged();
    let me = nix::unistd::getuid().as_raw();
    let source = MungeCredentialSource::new(munged.socket());
    let strict =
        MungeAuthenticator::new(munged.socket()).allow_only_uids(vec![me.wrapping_add(4242)]);
    let credential = source.credential_for(b"reply").await.unwrap();
    let err = strict
        .verify(b"reply", &credential, &peer())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuthError::Unauthorized(m) if m.contains(&me.to_string())),
        "{err}"
    );
}

#[tokio::test]
async fn an_expired_credential_is_refused() {
    let (_dir, munged) = munged();
    let source = MungeCredentialSource::new(munged.socket()).with_ttl(1);
    let credential = source.credential_for(b"m").await.unwrap();
    // TTL granularity is whole seconds: after TTL + 2 s the credential is surely expired.
    // Sleeping is the only way to let real time pass for munged; nothing is synchronised on it.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let err = MungeAuthenticator::new(munged.socket())
        .verify(b"m", &credential, &peer())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Expired(_)), "{err}");
}

#[tokio::test]
async fn an_unreachable_munged_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-munged-here");
    let err = MungeCredentialSource::new(MungeSocket::at(&socket))
        .probe()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuthError::Unavailable(m) if m.contains(&socket.display().to_string())),
        "{err}"
    );
}

#[tokio::test]
async fn a_reply_key_is_sealed_only_for_the_allowed_server_uid_and_only_it_can_read_it() {
    let (_dir, munged) = munged();
    let me = nix::unistd::geteuid().as_raw();
    let other = me.wrapping_add(4242);
    let key = ReplyKey::random();
    let verifier = MungeAuthenticator::new(munged.socket());

    let plain = MungeCredentialSource::new(munged.socket());
    let none = plain.credential_with_key(b"req", &key, me).await.unwrap();
    assert!(none.is_none(), "no key is sealed unless asked for");

    let source = MungeCredentialSource::new(munged.socket()).seal_keys_for(vec![me, other]);
    let not_listed = source
        .credential_with_key(b"req", &key, me.wrapping_add(1))
        .await
        .unwrap();
    assert!(
        not_listed.is_none(),
        "a server uid the client does not trust gets no key"
    );

    let sealed = source
        .credential_with_key(b"req", &key, me)
        .await
        .unwrap()
        .unwrap();
    let verified = verifier
        .verify_request(b"req", &sealed, &peer())
        .await
        .unwrap();
    assert_eq!(verified.identity.uid, nix::unistd::getuid().as_raw());
    assert_eq!(verified.reply_key, Some(key.clone()));

    // Sealed for another uid: this process (even as root) cannot read it.
    let theirs = source
        .credential_with_key(b"req", &key, other)
        .await
        .unwrap()
        .unwrap();
    let refused = verifier
        .verify_request(b"req", &theirs, &peer())
        .await
        .unwrap_err();
    assert!(matches!(refused, AuthError::Unauthorized(_)), "{refused}");

    // A plain credential carries no key.
    let unsealed = plain.credential_for(b"req").await.unwrap();
    let none = verifier
        .verify_request(b"req", &unsealed, &peer())
        .await
        .unwrap()
        .reply_key;
    assert_eq!(none, None);
}
