//! The mesh CA in Kubernetes mode: its root key and certificate in the Secret
//! [`CA_SECRET`] of the controller's namespace (every controller replica, leader or
//! standby, loads the same root), and the [`TokenAuthenticator`] that checks a workload's
//! projected ServiceAccount token with a TokenReview against the API server.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use sluice_mesh::identity::CertificateAuthority;
use sluice_mesh::issuance::{AuthError, ServiceAccountRef, TOKEN_AUDIENCE, TokenAuthenticator};

pub use crate::runtime::kube::ROOT_CONFIGMAP;
use crate::runtime::kube::{MANAGED_BY, manifest};
use crate::store::kube::{FIELD_MANAGER, api_code};

/// The Secret holding the CA's root (type `Opaque`, keys [`CERT_KEY`], [`KEY_KEY`]).
pub const CA_SECRET: &str = "sluice-mesh-ca";
/// The root certificate's key in [`CA_SECRET`].
pub const CERT_KEY: &str = "ca.crt";
/// The root private key's key in [`CA_SECRET`].
pub const KEY_KEY: &str = "ca.key";
/// The prefix of a ServiceAccount's user name in a TokenReview.
const SA_USER_PREFIX: &str = "system:serviceaccount:";
/// How long one TokenReview may take before the CA answers 503.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The root could not be loaded from, or stored in, its Secret.
#[derive(Debug, thiserror::Error)]
pub enum KubeCaError {
    /// The API server refused or failed a request.
    #[error("{verb} Secret {namespace}/{CA_SECRET}: {source}")]
    Api {
        /// `get` or `create`.
        verb: &'static str,
        /// The controller's namespace.
        namespace: String,
        /// The API server's error.
        #[source]
        source: kube::Error,
    },
    /// The Secret exists but does not hold a usable root.
    #[error("Secret {namespace}/{CA_SECRET}: {reason}")]
    BadSecret {
        /// The controller's namespace.
        namespace: String,
        /// What is wrong with it (a missing key, text that is not UTF-8, a bad root).
        reason: String,
    },
    /// A new root could not be generated.
    #[error("generating the mesh root: {0}")]
    Generate(String),
}

fn key_text(secret: &Secret, key: &str, namespace: &str) -> Result<String, KubeCaError> {
    let bad = |reason: String| KubeCaError::BadSecret {
        namespace: namespace.to_owned(),
        reason,
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| bad(format!("data.{key} is missing")))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| bad(format!("data.{key} is not UTF-8 PEM")))
}

fn from_secret(
    secret: &Secret,
    namespace: &str,
    trust_domain: &str,
    workload_ttl: Duration,
) -> Result<CertificateAuthority, KubeCaError> {
    let cert = key_text(secret, CERT_KEY, namespace)?;
    let key = key_text(secret, KEY_KEY, namespace)?;
    CertificateAuthority::from_pem(
        trust_domain,
        &cert,
        &key,
        workload_ttl,
        &format!("Secret {namespace}/{CA_SECRET}"),
    )
    .map_err(|e| KubeCaError::BadSecret {
        namespace: namespace.to_owned(),
        reason: e.to_string(),
    })
}

/// The CA whose root is in Secret [`CA_SECRET`] of `namespace`: read when it exists, else
/// generated and created; when another controller created it first (409), theirs is read.
pub async fn load_or_create(
    client: &Client,
    namespace: &str,
    trust_domain: &str,
    workload_ttl: Duration,
) -> Result<CertificateAuthority, KubeCaError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let api_error = |verb, source| KubeCaError::Api {
        verb,
        namespace: namespace.to_owned(),
        source,
    };
    if let Some(secret) = api
        .get_opt(CA_SECRET)
        .await
        .map_err(|e| api_error("get", e))?
    {
        tracing::info!(namespace, "mesh CA root loaded from Secret {CA_SECRET}");
        return from_secret(&secret, namespace, trust_domain, workload_ttl);
    }
    let (ca, root) = CertificateAuthority::generate(
        trust_domain,
        sluice_mesh::identity::ca::DEFAULT_ROOT_TTL,
        workload_ttl,
    )
    .map_err(|e| KubeCaError::Generate(e.to_string()))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_owned(),
                MANAGED_BY.1.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        // The root never changes in place: a new one is a new Secret.
        immutable: Some(true),
        data: Some(BTreeMap::from([
            (CERT_KEY.to_owned(), ByteString(root.cert_pem.into_bytes())),
            (KEY_KEY.to_owned(), ByteString(root.key_pem.into_bytes())),
        ])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(namespace, "mesh CA root generated into Secret {CA_SECRET}");
            Ok(ca)
        }
        // Another controller replica created it between our get and create: use theirs.
        Err(e) if api_code(&e) == Some(409) => {
            let secret = api.get(CA_SECRET).await.map_err(|e| api_error("get", e))?;
            tracing::info!(namespace, "mesh CA root created by another replica; loaded");
            from_secret(&secret, namespace, trust_domain, workload_ttl)
        }
        Err(e) => Err(api_error("create", e)),
    }
}

/// Server-side applies the root ConfigMap [`ROOT_CONFIGMAP`] in `namespace` (the controller's:
/// the router mounts it; the runtime applies it where revisions run).
pub async fn apply_root_config_map(
    client: &Client,
    namespace: &str,
    root_pem: &str,
) -> Result<(), kube::Error> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), namespace);
    api.patch(
        ROOT_CONFIGMAP,
        &kube::api::PatchParams::apply(FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&manifest::root_config_map(namespace, root_pem)),
    )
    .await
    .map(|_| ())
}

/// Checks projected ServiceAccount tokens (audience [`TOKEN_AUDIENCE`]) with a TokenReview
/// (`authentication.k8s.io/v1`) on the API server.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: Client,
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// Reviews tokens on `client`'s API server (which needs `create tokenreviews`).
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    async fn review(&self, token: &str) -> Result<ServiceAccountRef, AuthError> {
        let review = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            status: None,
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| {
                    AuthError::Unavailable(format!(
                        "the API server did not answer the TokenReview within {REVIEW_TIMEOUT:?}"
                    ))
                })?
                .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        outcome(answer.status.as_ref())
    }
}

impl TokenAuthenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ServiceAccountRef, AuthError>> + Send + 'a>> {
        Box::pin(self.review(token))
    }
}

/// The ServiceAccount a TokenReview's status authenticates, or why the token is refused.
pub fn outcome(status: Option<&TokenReviewStatus>) -> Result<ServiceAccountRef, AuthError> {
    let Some(status) = status else {
        return Err(AuthError::Unavailable(
            "the TokenReview came back without a status".into(),
        ));
    };
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("the API server did not authenticate it");
        return Err(AuthError::Rejected(format!(
            "token not authenticated: {why}"
        )));
    }
    // An API server that does not know audiences answers without them; ours must be there.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == TOKEN_AUDIENCE) {
        return Err(AuthError::Rejected(format!(
            "the token is not for audience {TOKEN_AUDIENCE:?} (its audiences: {audiences:?})"
        )));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    service_account(username).ok_or_else(|| {
        AuthError::Rejected(format!(
            "user {username:?} is not a ServiceAccount (system:serviceaccount:<namespace>:<name>)"
        ))
    })
}

/// `system:serviceaccount:<ns>:<name>` → the ServiceAccount; anything else → `None`.
pub fn service_account(username: &str) -> Option<ServiceAccountRef> {
    let rest = username.strip_prefix(SA_USER_PREFIX)?;
    let (namespace, name) = rest.split_once(':')?;
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (label(namespace) && label(name)).then(|| ServiceAccountRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, user: &str, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            user: Some(UserInfo {
                username: Some(user.to_owned()),
                ..UserInfo::default()
            }),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            error: None,
        }
    }

    fn rejected(r: Result<ServiceAccountRef, AuthError>) -> String {
        match r {
            Err(AuthError::Rejected(m)) => m,
            Err(AuthError::Unavailable(m)) => panic!("unavailable, not rejected: {m}"),
            Ok(sa) => panic!("accepted {}/{}", sa.namespace, sa.name),
        }
    }

    #[test]
    fn a_service_account_token_for_our_audience_names_the_account() {
        let sa = outcome(Some(&status(
            true,
            "system:serviceaccount:team-a:hello",
            &["sluice-ca"],
        )))
        .unwrap();
        assert_eq!(
            (sa.namespace.as_str(), sa.name.as_str()),
            ("team-a", "hello")
        );
    }

    #[test]
    fn refusals_say_why() {
        let mut s = status(false, "", &[]);
        s.error = Some("token has been invalidated".into());
        let m = rejected(outcome(Some(&s)));
        assert!(m.contains("token has been invalidated"), "{m}");

        let m = rejected(outcome(Some(&status(true, "alice", &["sluice-ca"]))));
        assert!(m.contains("\"alice\" is not a ServiceAccount"), "{m}");

        let m = rejected(outcome(Some(&status(
            true,
            "system:serviceaccount:team-a:hello",
            &["https://kubernetes.default.svc"],
        ))));
        assert!(m.contains("audience \"sluice-ca\""), "{m}");

        assert!(matches!(outcome(None), Err(AuthError::Unavailable(_))));
    }

    #[tokio::test]
    async fn an_api_server_out_of_reach_makes_the_authenticator_unavailable() {
        // A loopback port nothing listens on any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let auth = TokenReviewAuthenticator::new(Client::try_from(config).unwrap());
        match auth.authenticate("a-token").await {
            Err(AuthError::Unavailable(m)) => assert!(m.contains("TokenReview failed"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_well_formed_service_account_names_pass() {
        assert!(service_account("system:serviceaccount:ns:sa").is_some());
        for bad in [
            "system:serviceaccount:ns",
            "system:serviceaccount::sa",
            "system:serviceaccount:ns:",
            "system:serviceaccount:ns:sa:extra",
            "system:serviceaccount:NS:sa",
            "system:serviceaccounts:ns",
            "system:node:kwok-node-0",
        ] {
            assert!(service_account(bad).is_none(), "{bad}");
        }
    }
}
