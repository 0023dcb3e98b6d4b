//! Registry authentication against the real registry: HTTP Basic (htpasswd) and Bearer tokens.

mod common;

use pronto_image::auth::{CredentialStore, Credentials};
use pronto_image::registry::RegistryError;
use pronto_image::{ClientOptions, RegistryClient};
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::{RegistryAuth, TestRegistry};

fn client_with(registry: &TestRegistry, user: &str, password: &str) -> RegistryClient {
    let mut credentials = CredentialStore::default();
    credentials.insert(
        &registry.host(),
        Credentials {
            username: user.into(),
            password: password.into(),
        },
    );
    RegistryClient::new(ClientOptions {
        credentials,
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test]
async fn basic_auth_from_credentials() {
    let registry = TestRegistry::start_with(Some(RegistryAuth::Basic {
        username: "alice".into(),
        password: "s3cret:with:colons".into(),
    }))
    .unwrap();
    let good = client_with(&registry, "alice", "s3cret:with:colons");
    let reference = registry.reference("private/app:v1");
    ImageBuilder::new()
        .layer(Layer::gzip().file("secret.txt", b"42"))
        .push(&good, &reference)
        .await
        .unwrap();

    let work = tempfile::tempdir().unwrap();
    // Authorized ahead (a fresh client: nothing cached), then the pull needs no challenge.
    let fresh = client_with(&registry, "alice", "s3cret:with:colons");
    fresh.authorize_pull(&reference).await.unwrap();
    common::pronto_unpack(&fresh, &reference, &work.path().join("ok"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(work.path().join("ok/secret.txt")).unwrap(),
        b"42"
    );

    for (name, client) in [
        ("anonymous", common::client()),
        ("wrong password", client_with(&registry, "alice", "nope")),
    ] {
        let err = common::pronto_unpack(&client, &reference, &work.path().join("denied"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                pronto_image::pull::PullError::Registry(RegistryError::Unauthorized { .. })
            ),
            "{name}: {err:?}"
        );
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "registry {} denied access to private/app (401 Unauthorized): authentication failed; check credentials",
                registry.host()
            ),
            "{name}"
        );
        assert!(!msg.contains("s3cret") && !msg.contains("nope"));
        assert!(!work.path().join("denied").exists());
        let err = client.authorize_pull(&reference).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::Unauthorized { .. }),
            "{name}: {err}"
        );
    }
}

/// An open registry is remembered as open, and later requests still work (no empty
/// `Authorization` header is sent).
#[tokio::test]
async fn authorizing_against_an_open_registry_changes_nothing() {
    let registry = TestRegistry::start();
    let client = common::client();
    let reference = registry.reference("open/app:v1");
    ImageBuilder::new()
        .layer(Layer::gzip().file("a.txt", b"open"))
        .push(&client, &reference)
        .await
        .unwrap();
    let fresh = common::client();
    for _ in 0..2 {
        fresh.authorize_pull(&reference).await.unwrap();
    }
    // A repository with no such manifest is still authorized (nothing to deny).
    fresh
        .authorize_pull(&registry.reference("open/none:v1"))
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    common::pronto_unpack(&fresh, &reference, &work.path().join("ok"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(work.path().join("ok/a.txt")).unwrap(),
        b"open"
    );
}

#[tokio::test]
async fn bearer_token_auth_with_a_token_server() {
    let registry = TestRegistry::start_with(Some(RegistryAuth::Token {
        username: "bob".into(),
        password: "hunter2".into(),
    }))
    .unwrap();
    let tokens = registry.token_server.as_ref().unwrap();
    let good = client_with(&registry, "bob", "hunter2");
    let reference = registry.reference("team/app:v1");
    ImageBuilder::new()
        .layer(Layer::gzip().file("a", b"a"))
        .layer(Layer::zstd().file("b", b"b"))
        .push(&good, &reference)
        .await
        .unwrap();
    let after_push = tokens.issued();
    assert!(after_push >= 1, "the push went through the token server");

    let work = tempfile::tempdir().unwrap();
    let fresh = client_with(&registry, "bob", "hunter2");
    common::pronto_unpack(&fresh, &reference, &work.path().join("ok"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(work.path().join("ok/b")).unwrap(), b"b");
    // A fresh client: one pull token (scope repository:team/app:pull), reused for the manifest, config and layers.
    assert_eq!(tokens.issued(), after_push + 1);

    let err = common::pronto_unpack(
        &client_with(&registry, "bob", "wrong"),
        &reference,
        &work.path().join("denied"),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "registry {}: authentication failed: token request to {}",
            registry.host(),
            tokens.realm()
        )),
        "{msg}"
    );
    assert!(msg.ends_with("failed: status 401 Unauthorized"), "{msg}");
    assert!(!msg.contains("wrong"));
    assert_eq!(tokens.denied(), 1);
}

/// A client made `with_credentials` reads what its credentials allow, and its tokens are its
/// own: the client it was made from (no credentials) is still refused afterwards, and so is a
/// sibling with a wrong password (both registry kinds).
#[tokio::test]
async fn a_client_with_credentials_shares_no_tokens() {
    for auth in [
        RegistryAuth::Basic {
            username: "alice".into(),
            password: "pw-one".into(),
        },
        RegistryAuth::Token {
            username: "alice".into(),
            password: "pw-one".into(),
        },
    ] {
        let registry = TestRegistry::start_with(Some(auth)).unwrap();
        let reference = registry.reference("private/shared:v1");
        ImageBuilder::new()
            .layer(Layer::gzip().file("f", b"x"))
            .push(&client_with(&registry, "alice", "pw-one"), &reference)
            .await
            .unwrap();
        let base = common::client();
        let good = base.with_credentials(
            &registry.host(),
            Credentials {
                username: "alice".into(),
                password: "pw-one".into(),
            },
        );
        good.authorize_pull(&reference).await.unwrap();
        good.fetch_manifest(&reference).await.unwrap();
        let bad = base.with_credentials(
            &registry.host(),
            Credentials {
                username: "alice".into(),
                password: "wrong".into(),
            },
        );
        for (name, client) in [("base", &base), ("wrong password", &bad)] {
            let e = client.authorize_pull(&reference).await.unwrap_err();
            assert!(
                e.to_string().contains("authentication failed"),
                "{name}: {e}"
            );
            assert!(!e.to_string().contains("pw-one"), "{name}: {e}");
        }
    }
}
