//! The client side of the admin API: finding its token, calling it, reading its errors,
//! and the loopback admin API that the `--kube` client commands call, served over the
//! current kubeconfig's API server.

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sluice_controller::admin;
use sluice_controller::store::KubeStore;
use sluice_controller::store::kube::infer_client;
use sluice_crds::autoscaling::ClusterConfig;
use sluice_mesh::guard::{self, AdminToken, ListenerGuard};

/// The admin API of a `sluice up` on this machine's default ports.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8081";
/// The most of an answer read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// A connection to an admin API: its base URL and bearer token.
#[derive(Clone, Debug)]
pub struct Admin {
    base: String,
    token: AdminToken,
}

impl Admin {
    /// The link that signs a browser in (the token becomes an `HttpOnly` cookie) and leads
    /// it on to `next` (a path of the admin API, such as `/ui`).
    pub fn login_link(&self, next: &str) -> String {
        format!(
            "{}/login?token={}&next={next}",
            self.base.trim_end_matches('/'),
            self.token.secret()
        )
    }

    /// The admin API at `base`, with the token `token` gives (`--token`/`SLUICE_TOKEN`) or,
    /// when none is given, the one in `state_dir`'s token file.
    pub fn discover(base: &str, token: Option<&str>, state_dir: &Path) -> anyhow::Result<Self> {
        let token = match token {
            Some(text) => AdminToken::from_text(text)
                .context("--token/SLUICE_TOKEN is empty or holds blanks or control characters")?,
            None => {
                let path = state_dir.join(guard::TOKEN_FILE);
                match AdminToken::read(&path) {
                    Ok(token) => token,
                    Err(guard::TokenError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        anyhow::bail!(
                            "no admin token: {} does not exist. Run this command in the folder \
                             `sluice up` runs in, or pass --state-dir DIR (SLUICE_STATE_DIR), or \
                             the token itself with --token (SLUICE_TOKEN)",
                            path.display()
                        )
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok(Self::new(base.to_owned(), token))
    }

    /// The admin API at `base` with `token`.
    pub fn new(base: String, token: AdminToken) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// One request to `path` (with its query), JSON in and out. An answer that is not JSON
    /// comes back as a JSON string.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(http::StatusCode, Value)> {
        let url = format!("{}{path}", self.base);
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.token.secret()))
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .with_context(|| format!("bad server URL {url:?}"))?;
        let resp = client.request(req).await.with_context(|| {
            format!("cannot reach the Sluice admin API at {url} (is `sluice up` running?)")
        })?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the response from {url}: {e}"))?
            .to_bytes();
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok((status, value))
    }
}

/// The error an admin API answered with: its `error` text (or the whole body) and status.
pub fn server_error(status: http::StatusCode, body: &Value) -> anyhow::Error {
    let message = body["error"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_owned);
    anyhow::anyhow!("{message} ({status})")
}

/// The admin API served on loopback over the current kubeconfig's API server, for the
/// `--kube` flag of `sluice apply/get/describe/delete`: the same requests, validation and
/// output as against `sluice up`. It acts with the user's Kubernetes credentials, so it
/// takes only requests bearing a random token made for this process (and passes the same
/// browser checks as `sluice up`'s admin API): another local user who finds the port
/// cannot borrow them.
pub async fn kube_admin_server() -> anyhow::Result<Admin> {
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let store = KubeStore::validating_batches(client, "sluice");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port for the Kubernetes client")?;
    let addr = listener.local_addr()?;
    let token = AdminToken::generate()?;
    let app = admin::guarded(
        admin::router(store, ClusterConfig::default()),
        ListenerGuard::new("the --kube client's admin API", addr, Some(token.clone())),
    );
    tokio::spawn(axum::serve(listener, app).into_future());
    Ok(Admin::new(format!("http://{addr}"), token))
}
