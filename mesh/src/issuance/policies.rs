//! Kubernetes mode's policy distribution over the CA's port: the controller keeps the valid
//! `AuthorizationPolicy` and `PeerAuthentication` objects of the cluster (a
//! [`PolicySource`]), the CA serves each workload the ones that can apply to it
//! (`GET` [`POLICIES_PATH`], client certificate required), and the workload follows them
//! with long polls ([`fetch_policies`], [`follow_policies`]).
//!
//! Wire protocol: `GET /v1/policies[?version=V][&waitSeconds=S]` over the CA's TLS port with
//! the caller's SVID as client certificate (none: 401). The answer is [`PoliciesResponse`]:
//! the caller's namespace's policies (its SPIFFE ID's `ns`) and the root namespace's
//! (mesh-wide) as multi-document YAML that [`crate::policy::Policies::parse_in`] accepts.
//! When `V` is the current version the request waits up to `S` seconds (at most
//! [`MAX_WAIT`], default [`DEFAULT_WAIT`]) for a change, then answers 304 (no body): no
//! change. At most [`MAX_WAITERS`] requests wait at once; more are answered 503.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use super::client::https_exchange;
use super::{ErrorBody, IssueError};
use crate::identity::SpiffeId;
use crate::policy::Policies;
use crate::tls::{ExpectedServer, MeshTls};

/// The path policies are served on.
pub const POLICIES_PATH: &str = "/v1/policies";
/// A Pod's labels as a JSON object (policies select workloads by them); set by the runtime.
pub const LABELS_ENV: &str = "SLUICE_MESH_LABELS";
/// How long a request for the current version waits for a change when it names no wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(25);
/// The longest wait a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Requests waiting for a change at once; more are answered 503 (retry later).
pub const MAX_WAITERS: usize = 1536;
/// Largest policy answer a workload reads.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// One valid policy object, as the controller keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyObject {
    /// `AuthorizationPolicy` or `PeerAuthentication`.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The manifest (YAML or JSON; one document) the mesh's parser validated.
    pub manifest: String,
}

/// The valid policies of the cluster at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySnapshot {
    /// Bumped on every change.
    pub version: u64,
    /// Istio's root namespace here: policies there apply mesh-wide (the controller's).
    pub root_namespace: String,
    /// Every valid policy.
    pub objects: Vec<PolicyObject>,
}

impl PolicySnapshot {
    /// The policies that can apply to a workload of `namespace`: its own and the root
    /// namespace's, as multi-document YAML.
    pub fn for_namespace(&self, namespace: &str) -> String {
        self.objects
            .iter()
            .filter(|o| o.namespace == namespace || o.namespace == self.root_namespace)
            .map(|o| o.manifest.trim_end_matches('\n'))
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

/// Where the CA gets the policies it serves (the controller's watch of the cluster). A
/// snapshot of version 0 means "not yet known": the CA answers 503 until the first publish.
pub trait PolicySource: Send + Sync + 'static {
    /// The current snapshot, following every change.
    fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>>;
}

/// A [`PolicySource`] fed by its owner: every [`PolicyPublisher::publish`] bumps the version.
#[derive(Debug)]
pub struct PolicyPublisher {
    tx: watch::Sender<Arc<PolicySnapshot>>,
}

impl PolicyPublisher {
    /// Not yet known (version 0: the CA answers 503), mesh-wide ones in `root_namespace`.
    pub fn new(root_namespace: &str) -> Self {
        let (tx, _) = watch::channel(Arc::new(PolicySnapshot {
            version: 0,
            root_namespace: root_namespace.to_owned(),
            objects: Vec::new(),
        }));
        Self { tx }
    }

    /// Replaces the policies; the version goes up by one.
    pub fn publish(&self, mut objects: Vec<PolicyObject>) {
        objects.sort_by(|a, b| {
            (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name))
        });
        self.tx.send_modify(|current| {
            *current = Arc::new(PolicySnapshot {
                version: current.version + 1,
                root_namespace: current.root_namespace.clone(),
                objects,
            });
        });
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<PolicySnapshot> {
        self.tx.borrow().clone()
    }
}

impl PolicySource for PolicyPublisher {
    fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.tx.subscribe()
    }
}

/// The answer to `GET /v1/policies`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoliciesResponse {
    /// Opaque version: pass it back as `?version=` to wait for a change.
    pub version: String,
    /// The root namespace (mesh-wide policies).
    pub root_namespace: String,
    /// The policies (multi-document YAML; empty when none apply).
    pub policies: String,
}

/// The version of what a workload of `namespace` is served: a digest of the root namespace
/// and those policies, so that two CA processes (two controller replicas behind one
/// Service) with the same policies answer the same version. A workload whose next long poll
/// lands on the other replica keeps waiting instead of taking the same set again (seen on a
/// real node with a version per process: every replica logged an update about every 25 s),
/// and a change in another namespace does not wake it.
fn version(snapshot: &PolicySnapshot, namespace: &str) -> String {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(snapshot.root_namespace.as_bytes());
    digest.update(b"\0");
    digest.update(snapshot.for_namespace(namespace).as_bytes());
    digest.finish().as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The CA's policy service: the source, the waiters' bound.
pub(crate) struct PolicyService {
    source: watch::Receiver<Arc<PolicySnapshot>>,
    waiters: Semaphore,
    /// Changes (or closes) when the CA stops: waiting requests end at once.
    stop: Option<watch::Receiver<()>>,
}

impl PolicyService {
    pub(crate) fn new(source: &dyn PolicySource) -> Self {
        Self {
            source: source.subscribe(),
            waiters: Semaphore::new(MAX_WAITERS),
            stop: None,
        }
    }

    /// At most `n` requests wait at once (tests; [`MAX_WAITERS`] otherwise).
    #[cfg(test)]
    fn with_max_waiters(mut self, n: usize) -> Self {
        self.waiters = Semaphore::new(n);
        self
    }

    /// Ends waiting requests (304) when `stop` changes or closes.
    pub(crate) fn with_stop(mut self, stop: watch::Receiver<()>) -> Self {
        self.stop = Some(stop);
        self
    }

    fn answer(&self, snapshot: &PolicySnapshot, namespace: &str) -> Response<Full<Bytes>> {
        json(
            StatusCode::OK,
            &PoliciesResponse {
                version: version(snapshot, namespace),
                root_namespace: snapshot.root_namespace.clone(),
                policies: snapshot.for_namespace(namespace),
            },
        )
    }

    /// Answers one `GET /v1/policies` from `caller` (the verified client SVID, if any).
    pub(crate) async fn handle<B>(
        &self,
        req: &Request<B>,
        caller: Option<&SpiffeId>,
    ) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "method {} not allowed on {POLICIES_PATH}; use GET",
                    req.method()
                ),
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET"));
            return response;
        }
        let Some(caller) = caller else {
            return error(
                StatusCode::UNAUTHORIZED,
                format!("{POLICIES_PATH} needs the workload's SVID as TLS client certificate"),
            );
        };
        let (version, wait) = match query(req.uri().query()) {
            Ok(q) => q,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        let mut rx = self.source.clone();
        let current = rx.borrow_and_update().clone();
        if current.version == 0 {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the policies are not yet known (the controller is still listing them); retry"
                    .into(),
            );
        }
        let namespace = caller.namespace();
        let Some(known) = version.filter(|v| *v == self::version(&current, namespace)) else {
            return self.answer(&current, namespace);
        };
        let Ok(_turn) = self.waiters.try_acquire() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_WAITERS} requests already wait for a change; retry later"),
            );
        };
        let mut stop = self.stop.clone();
        let stopped = async {
            match stop.as_mut() {
                Some(stop) => {
                    let _ = stop.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        // Until what this namespace is served changes (a change elsewhere keeps it waiting).
        let changed = async {
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() {
                        return None;
                    },
                    () = &mut stopped => return None,
                }
                let now = rx.borrow_and_update().clone();
                if self::version(&now, namespace) != known {
                    return Some(now);
                }
            }
        };
        match tokio::time::timeout(wait, changed).await {
            Ok(Some(now)) => self.answer(&now, namespace),
            // No change in time, the source is gone, or the CA is stopping: no change.
            Ok(None) | Err(_) => {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                response
            }
        }
    }
}

/// `version` and `waitSeconds` of the query string.
fn query(query: Option<&str>) -> Result<(Option<String>, Duration), String> {
    let mut version = None;
    let mut wait = DEFAULT_WAIT;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "version" => version = Some(value.to_owned()),
            "waitSeconds" => {
                let secs: u64 = value.parse().map_err(|_| {
                    format!("query waitSeconds: {value:?} is not a whole number of seconds")
                })?;
                wait = Duration::from_secs(secs).min(MAX_WAIT);
            }
            other => return Err(format!("query: unknown parameter {other:?}")),
        }
    }
    Ok((version, wait))
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

fn error(status: StatusCode, error: String) -> Response<Full<Bytes>> {
    tracing::info!(status = status.as_u16(), %error, "policy request refused");
    json(status, &ErrorBody::new(error))
}

/// Asks the CA at `addr` for the policies of the workload `tls` is (its SVID is the client
/// certificate). With `version` (the last answer's), waits up to `wait` for a change and
/// returns `None` when there was none.
pub async fn fetch_policies(
    addr: &str,
    tls: &MeshTls,
    version: Option<&str>,
    wait: Duration,
) -> Result<Option<PoliciesResponse>, IssueError> {
    let http_error = |message: String| IssueError::Http {
        addr: addr.to_owned(),
        message,
    };
    let config = tls
        .client_config(ExpectedServer::AnyInTrustDomain)
        .map_err(|e| http_error(e.to_string()))?;
    let mut uri = format!("{POLICIES_PATH}?waitSeconds={}", wait.as_secs());
    if let Some(v) = version {
        uri.push_str("&version=");
        uri.push_str(v);
    }
    let request = Request::get(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| http_error(format!("building the request: {e}")))?;
    let (status, body) = https_exchange(
        addr,
        config,
        tls.bundle().trust_domain(),
        request,
        MAX_ANSWER_BYTES,
        wait + Duration::from_secs(15),
    )
    .await?;
    match status {
        StatusCode::OK => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| http_error(format!("answer is not a policy response: {e}"))),
        StatusCode::NOT_MODIFIED => Ok(None),
        status => Err(IssueError::Status {
            addr: addr.to_owned(),
            status: status.as_u16(),
            message: match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(body) => body.error,
                Err(_) => String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            },
        }),
    }
}

/// A policy answer that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFetchError {
    /// The CA could not be asked.
    #[error(transparent)]
    Fetch(#[from] IssueError),
    /// The CA answered policies this workload refuses (the CA validated them: a version skew).
    #[error("policies from the CA at {addr} are invalid: {message}")]
    Invalid {
        /// The CA's address.
        addr: String,
        /// Every invalid document.
        message: String,
    },
}

/// Parses an answer into the policies in force.
pub fn parse_answer(addr: &str, answer: &PoliciesResponse) -> Result<Policies, PolicyFetchError> {
    Policies::parse_in(&answer.policies, &answer.root_namespace).map_err(|errors| {
        PolicyFetchError::Invalid {
            addr: addr.to_owned(),
            message: errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }
    })
}

/// How a workload follows its policies.
#[derive(Clone, Debug)]
pub struct FollowConfig {
    /// Attempts at the first fetch before giving up (the replica does not start).
    pub first_attempts: u32,
    /// First retry delay (doubling).
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long each long poll asks to wait.
    pub wait: Duration,
}

impl Default for FollowConfig {
    fn default() -> Self {
        Self {
            first_attempts: 8,
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(10),
            wait: DEFAULT_WAIT,
        }
    }
}

/// The first policies, with bounded retries: a replica must not serve before it knows them.
pub async fn first_policies(
    addr: &str,
    tls: &MeshTls,
    config: &FollowConfig,
) -> Result<(PoliciesResponse, Policies), PolicyFetchError> {
    let mut backoff = sluice_core::Backoff::new(config.retry_min, config.retry_max);
    let mut attempt = 1;
    loop {
        let result = async {
            let answer = fetch_policies(addr, tls, None, config.wait)
                .await?
                .ok_or_else(|| IssueError::Http {
                    addr: addr.to_owned(),
                    message: "answered 304 to a request without a version".into(),
                })?;
            let policies = parse_answer(addr, &answer)?;
            Ok::<_, PolicyFetchError>((answer, policies))
        }
        .await;
        match result {
            Ok(got) => return Ok(got),
            Err(e) if attempt >= config.first_attempts => return Err(e),
            Err(e) => tracing::warn!(
                attempt,
                "fetching the security policies failed, retrying: {e}"
            ),
        }
        tokio::time::sleep(backoff.next_delay()).await;
        attempt += 1;
    }
}

/// Follows the policies from `version` on with long polls, publishing each new set to `tx`;
/// on errors keeps the current set and retries with backoff. Ends when every receiver of
/// `tx` is gone.
pub async fn follow_policies(
    addr: String,
    tls: MeshTls,
    mut version: String,
    config: FollowConfig,
    tx: watch::Sender<Arc<Policies>>,
) {
    let mut backoff = sluice_core::Backoff::new(config.retry_min, config.retry_max);
    loop {
        let poll = async {
            let answer = fetch_policies(&addr, &tls, Some(&version), config.wait).await?;
            match answer {
                Some(answer) => {
                    let policies = parse_answer(&addr, &answer)?;
                    Ok::<_, PolicyFetchError>(Some((answer.version, policies)))
                }
                None => Ok(None),
            }
        };
        let result = tokio::select! {
            result = poll => result,
            () = tx.closed() => return,
        };
        match result {
            Ok(Some((new_version, policies))) => {
                tracing::info!(version = %new_version, "security policies updated from the mesh CA");
                version = new_version;
                tx.send_replace(Arc::new(policies));
                backoff.reset();
            }
            Ok(None) => backoff.reset(),
            Err(e) => {
                tracing::warn!("keeping the current security policies: {e}");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = tx.closed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn object(kind: &str, ns: &str, name: &str) -> PolicyObject {
        PolicyObject {
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
            manifest: format!("kind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\n"),
        }
    }

    #[test]
    fn a_namespace_sees_its_own_and_the_root_namespaces_policies() {
        let publisher = PolicyPublisher::new("sluice-system");
        publisher.publish(vec![
            object("AuthorizationPolicy", "team-b", "b"),
            object("AuthorizationPolicy", "team-a", "a"),
            object("PeerAuthentication", "sluice-system", "mesh"),
        ]);
        let snapshot = publisher.current();
        assert_eq!(snapshot.version, 1);
        let text = snapshot.for_namespace("team-a");
        assert!(text.contains("name: a,") && text.contains("name: mesh,"));
        assert!(!text.contains("name: b,"), "{text}");
        assert_eq!(text.matches("\n---\n").count(), 1);
        publisher.publish(Vec::new());
        assert_eq!(publisher.current().version, 2);
        assert_eq!(publisher.current().for_namespace("team-a"), "");
    }

    fn get(query: &str) -> Request<()> {
        Request::get(format!("{POLICIES_PATH}{query}"))
            .body(())
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_until_published_then_long_polls_wait_for_a_change_or_time_out() {
        let publisher = PolicyPublisher::new("sluice-system");
        let service = PolicyService::new(&publisher);
        let caller = SpiffeId::new("cluster.local", "team-a", "default").ok();
        let caller = caller.as_ref();
        assert_eq!(
            service.handle(&get(""), caller).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        publisher.publish(vec![object("AuthorizationPolicy", "team-a", "a")]);
        let first = service.handle(&get(""), caller).await;
        assert_eq!(first.status(), StatusCode::OK);
        let body = first.into_body().collect().await.map(|b| b.to_bytes());
        let first: PoliciesResponse =
            serde_json::from_slice(&body.unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        // No change within the wait (paused clock: the timeout fires without real waiting).
        let same = format!("?version={}&waitSeconds=20", first.version);
        let started = tokio::time::Instant::now();
        assert_eq!(
            service.handle(&get(&same), caller).await.status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        // A change while waiting ends the wait with the new set.
        let request = get(&same);
        let waiting = service.handle(&request, caller);
        let publish = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            publisher.publish(Vec::new());
        };
        let (answer, ()) = tokio::join!(waiting, publish);
        assert_eq!(answer.status(), StatusCode::OK);
        // Not a GET: 405 naming the method.
        let post = Request::post(POLICIES_PATH).body(()).unwrap_or_default();
        assert_eq!(
            service.handle(&post, caller).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test(start_paused = true)]
    async fn two_cas_with_the_same_policies_answer_the_same_version() {
        // Two controller replicas behind one Service: a long poll that lands on the other
        // one waits (304), it does not take the same set again.
        let (a, b) = (
            PolicyPublisher::new("sluice-system"),
            PolicyPublisher::new("sluice-system"),
        );
        a.publish(vec![object("AuthorizationPolicy", "team-a", "a")]);
        b.publish(Vec::new());
        b.publish(vec![object("AuthorizationPolicy", "team-a", "a")]);
        let caller = SpiffeId::new("cluster.local", "team-a", "default").ok();
        let from_a = version(&a.current(), "team-a");
        assert_eq!(from_a, version(&b.current(), "team-a"));
        let service_b = PolicyService::new(&b);
        let request = get(&format!("?version={from_a}&waitSeconds=10"));
        // A change in another namespace keeps it waiting too.
        let elsewhere = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            b.publish(vec![
                object("AuthorizationPolicy", "team-a", "a"),
                object("AuthorizationPolicy", "team-b", "b"),
            ]);
        };
        let started = tokio::time::Instant::now();
        let (answer, ()) = tokio::join!(service_b.handle(&request, caller.as_ref()), elsewhere);
        assert_eq!(answer.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_ne!(from_a, version(&b.current(), "team-b"));
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_the_ca_ends_waiting_requests_at_once() {
        let publisher = PolicyPublisher::new("sluice-system");
        publisher.publish(Vec::new());
        let (stop_tx, stop_rx) = watch::channel(());
        let service = PolicyService::new(&publisher).with_stop(stop_rx);
        let caller = SpiffeId::new("cluster.local", "team-a", "default").ok();
        let version = version(&publisher.current(), "team-a");
        let request = get(&format!("?version={version}&waitSeconds=30"));
        let started = tokio::time::Instant::now();
        let stop = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(stop_tx);
        };
        let (answer, ()) = tokio::join!(service.handle(&request, caller.as_ref()), stop);
        assert_eq!(answer.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_requests_are_bounded() {
        let publisher = PolicyPublisher::new("sluice-system");
        publisher.publish(Vec::new());
        let service = PolicyService::new(&publisher).with_max_waiters(1);
        let caller = SpiffeId::new("cluster.local", "team-a", "default").ok();
        let version = version(&publisher.current(), "team-a");
        let request = get(&format!("?version={version}&waitSeconds=10"));
        let (first, second) = tokio::join!(service.handle(&request, caller.as_ref()), async {
            // Yield until the first request holds the only turn.
            while service.waiters.available_permits() > 0 {
                tokio::task::yield_now().await;
            }
            service.handle(&request, caller.as_ref()).await
        });
        assert_eq!(first.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_query_names_version_and_a_bounded_wait() {
        assert_eq!(query(None).unwrap(), (None, DEFAULT_WAIT));
        assert_eq!(
            query(Some("version=ab-3&waitSeconds=2")).unwrap(),
            (Some("ab-3".into()), Duration::from_secs(2))
        );
        assert_eq!(query(Some("waitSeconds=999")).unwrap().1, MAX_WAIT);
        assert!(
            query(Some("waitSeconds=x"))
                .unwrap_err()
                .contains("waitSeconds")
        );
        assert!(query(Some("since=1")).unwrap_err().contains("since"));
    }
}
