//! How each function reaches its image's registry: the daemon-wide credentials
//! (`~/.docker/config.json`, [`RegistryClient::from_env`]), or its own — a username and password
//! in its `registryConfig.authConfig` (Function Compute 3.0's field), or the name of a
//! credential stored by the server (`registryConfig.credentialName`, Pronto's). And where its
//! converted artifact goes: its `artifactRepository`, else the server's
//! `--artifact-repository`, else beside the image.
//!
//! - A function's own credentials apply to its image's registry; the daemon-wide ones still
//!   apply to the other registries (an artifact repository elsewhere).
//! - Each set of credentials gets its own [`RegistryClient`] ([`RegistryClient::with_credentials`]:
//!   the connection pool shared, a token cache of its own), kept for the daemon's life, so a
//!   token earned by one function's credentials is never sent for another function.
//! - Named credentials are in the store (`registry_credentials`, the database file 0600) and in
//!   memory here: cold starts look them up without a query. Their passwords are never
//!   returned by the API ([`CredentialView`]) and never logged (`Debug` redacts them).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};

use pronto_image::auth::Credentials;
use pronto_image::{Digest, Reference, RegistryClient};
use serde::{Deserialize, Serialize};

use crate::model::{format_time, ContainerConfig, RegistryCredential};
use crate::store::{Store, StoreError};

/// Why a function's registry settings cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("customContainerConfig.registryConfig.credentialName: registry credential {0:?} does not exist")]
    UnknownCredential(String),
    #[error(
        "customContainerConfig.registryConfig.credentialName: registry credential {name:?} is \
         for registry {credential_registry}, the image is on {image_registry}"
    )]
    OtherRegistry {
        name: String,
        credential_registry: String,
        image_registry: String,
    },
}

/// What the API shows of a stored credential: never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    pub credential_name: String,
    pub registry: String,
    pub user_name: String,
    pub created_time: String,
}

impl From<&RegistryCredential> for CredentialView {
    fn from(c: &RegistryCredential) -> CredentialView {
        CredentialView {
            credential_name: c.name.clone(),
            registry: c.registry.clone(),
            user_name: c.username.clone(),
            created_time: format_time(c.created_time),
        }
    }
}

/// The registry side of every function: clients per credentials, named credentials, the
/// server's artifact repository.
#[derive(Debug)]
pub struct RegistryAccess {
    node: RegistryClient,
    artifact_repository: Option<Reference>,
    store: Store,
    named: RwLock<BTreeMap<String, RegistryCredential>>,
    /// Clients by the SHA-256 of `registry \0 username \0 password`.
    clients: Mutex<HashMap<Digest, RegistryClient>>,
}

impl RegistryAccess {
    /// Loads the named credentials from `store`.
    pub async fn load(
        store: Store,
        node: RegistryClient,
        artifact_repository: Option<Reference>,
    ) -> Result<RegistryAccess, StoreError> {
        let named = store
            .credentials()
            .await?
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        Ok(RegistryAccess {
            node,
            artifact_repository,
            store,
            named: RwLock::new(named),
            clients: Mutex::default(),
        })
    }

    /// The daemon-wide client.
    pub fn node(&self) -> &RegistryClient {
        &self.node
    }

    /// The client of a function whose image is `image`: its own (`Some`) when its
    /// `registryConfig` gives credentials, else `None` (the node's).
    pub fn client_for(
        &self,
        config: &ContainerConfig,
        image: &Reference,
    ) -> Result<Option<RegistryClient>, AccessError> {
        let Some(rc) = &config.registry_config else {
            return Ok(None);
        };
        let (registry, credentials) = match (&rc.auth_config, &rc.credential_name) {
            (Some(a), _) => (
                image.registry.clone(),
                Credentials {
                    username: a.user_name.clone(),
                    password: a.password.clone(),
                },
            ),
            (None, Some(name)) => {
                let named = self.named.read().expect("credentials lock poisoned");
                let c = named
                    .get(name)
                    .ok_or_else(|| AccessError::UnknownCredential(name.clone()))?;
                if c.registry != image.registry {
                    return Err(AccessError::OtherRegistry {
                        name: name.clone(),
                        credential_registry: c.registry.clone(),
                        image_registry: image.registry.clone(),
                    });
                }
                (
                    c.registry.clone(),
                    Credentials {
                        username: c.username.clone(),
                        password: c.password.clone(),
                    },
                )
            }
            (None, None) => return Ok(None),
        };
        let key = Digest::of(
            [
                registry.as_bytes(),
                credentials.username.as_bytes(),
                credentials.password.as_bytes(),
            ]
            .join(&0u8)
            .as_slice(),
        );
        let mut clients = self.clients.lock().expect("clients lock poisoned");
        Ok(Some(
            clients
                .entry(key)
                .or_insert_with(|| self.node.with_credentials(&registry, credentials))
                .clone(),
        ))
    }

    /// The repository a function's artifact is pushed to: its own `artifactRepository`, else
    /// the server's; `None`: beside the image.
    pub fn artifact_repository(&self, config: &ContainerConfig) -> Option<Reference> {
        config
            .artifact_repository
            .as_deref()
            .and_then(|r| pronto_artifact::parse_repository(r).ok())
            .or_else(|| self.artifact_repository.clone())
    }

    /// Stores a named credential.
    pub async fn create(&self, cred: RegistryCredential) -> Result<CredentialView, StoreError> {
        self.store.create_credential(cred.clone()).await?;
        let view = CredentialView::from(&cred);
        self.named
            .write()
            .expect("credentials lock poisoned")
            .insert(cred.name.clone(), cred);
        Ok(view)
    }

    /// Every named credential, by name, without their passwords.
    pub fn list(&self) -> Vec<CredentialView> {
        let named = self.named.read().expect("credentials lock poisoned");
        named.values().map(CredentialView::from).collect()
    }

    pub fn get(&self, name: &str) -> Option<CredentialView> {
        let named = self.named.read().expect("credentials lock poisoned");
        named.get(name).map(CredentialView::from)
    }

    /// Deletes a named credential: functions that name it fail to start (and to convert)
    /// until it is created again or they are updated.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.store.delete_credential(name).await?;
        self.named
            .write()
            .expect("credentials lock poisoned")
            .remove(name);
        Ok(())
    }
}
