//! What protects Sluice's own HTTP listeners that are not the public ingress (the admin
//! API, metrics and stats endpoints) from a local user and from a hostile web page in the
//! user's browser.
//!
//! * [`AdminToken`]: a random bearer token, created at first start in the state directory
//!   (file 0600 in a 0700 directory; a token file others can read is refused), which every
//!   request but the open paths must present: `Authorization: Bearer <token>`, or the
//!   `HttpOnly`, `SameSite=Strict` cookie a browser gets from `GET /login?token=…`
//!   (`&next=/ui` leads it on to a path of the same listener, such as the dashboard).
//! * [`ListenerGuard`]: the browser defences, checked before the token: the `Host` must be
//!   an address the listener serves (a DNS-rebinding page sends its own name), an `Origin`
//!   must be the listener's own, and an unsafe method must carry a JSON or YAML
//!   `Content-Type` (a `text/plain` POST is a CORS "simple request" any page can send
//!   without a preflight). No listener here answers with CORS headers.
//!
//! [`ListenerGuard::check`] is pure over the request's head, so each server adds it as a
//! few lines of middleware and the rules are tested here once.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

/// File name of the admin token inside the state directory.
pub const TOKEN_FILE: &str = "admin-token";
/// Name of the cookie `GET /login` sets.
pub const COOKIE_NAME: &str = "sluice-admin-token";
/// The path that exchanges `?token=` for the cookie.
pub const LOGIN_PATH: &str = "/login";

/// Why the admin token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading, creating or securing a file or folder failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The token file can be read or written by other users.
    #[error(
        "the admin token file {} is accessible to other users (mode {mode:04o}); it must be \
         0600: run `chmod 600 {}`, or delete it and a new token is made at the next start",
        path.display(), path.display()
    )]
    LoosePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file holds no usable token.
    #[error(
        "the admin token file {} holds no token (expected 32 to 256 visible ASCII \
         characters); delete it and a new one is made at the next start",
        path.display()
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// No random bytes from the system.
    #[error("the system's random number generator failed")]
    Random,
}

/// The admin API's bearer token (its text never appears in `Debug` output).
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A new random token: 32 bytes from the system's generator, as 64 hex digits.
    pub fn generate() -> Result<Self, TokenError> {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| TokenError::Random)?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// A token given by the user (`--token`, `SLUICE_TOKEN`), surrounding blanks removed.
    pub fn from_text(text: &str) -> Option<Self> {
        let t = text.trim();
        let ok = (1..=256).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(t.to_owned()))
    }

    /// The token of `state_dir`, made at first start: the folder is created (or narrowed)
    /// to 0700 and the token written to a new 0600 file; an existing file is read, and
    /// refused when other users can access it.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, TokenError> {
        std::fs::create_dir_all(state_dir).map_err(|source| TokenError::Io {
            what: "creating the state directory",
            path: state_dir.to_owned(),
            source,
        })?;
        let dir_mode = std::fs::metadata(state_dir)
            .map_err(|source| TokenError::Io {
                what: "reading",
                path: state_dir.to_owned(),
                source,
            })?
            .permissions()
            .mode();
        if dir_mode & 0o077 != 0 {
            std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| TokenError::Io {
                    what: "making the state directory private (0700)",
                    path: state_dir.to_owned(),
                    source,
                },
            )?;
        }
        let path = state_dir.join(TOKEN_FILE);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                let token = Self::generate()?;
                file.write_all(format!("{}\n", token.0).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|source| TokenError::Io {
                        what: "writing",
                        path: path.clone(),
                        source,
                    })?;
                Ok(token)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::read(&path),
            Err(source) => Err(TokenError::Io {
                what: "creating",
                path,
                source,
            }),
        }
    }

    /// Reads a token file, refusing one other users can access (group or other bits set).
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let io = |what| {
            move |source| TokenError::Io {
                what,
                path: path.to_owned(),
                source,
            }
        };
        let mode = std::fs::metadata(path)
            .map_err(io("reading"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(TokenError::LoosePermissions {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io("reading"))?;
        match Self::from_text(&text) {
            Some(t) if t.0.len() >= 32 => Ok(t),
            _ => Err(TokenError::Malformed {
                path: path.to_owned(),
            }),
        }
    }

    /// The token's text, to send as `Authorization: Bearer …`.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Which `Host` names a listener answers to, besides IP literals of its own address.
#[derive(Clone, Debug, Default)]
pub enum HostNames {
    /// `localhost` (for a listener on a loopback or unspecified address) and IP literals.
    #[default]
    Local,
    /// Also any name ending in one of these suffixes (e.g. `.svc`, `.svc.cluster.local` for a
    /// listener reached through a Kubernetes Service).
    Suffixes(Vec<String>),
}

/// The checks every request to one non-ingress listener goes through.
#[derive(Clone, Debug)]
pub struct ListenerGuard {
    /// What the listener is, for messages ("the admin API").
    pub name: &'static str,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// Which host names it answers to.
    pub hosts: HostNames,
    /// The bearer token every request but `open_paths` needs; `None`: no token (a
    /// listener protected otherwise, e.g. by mutual TLS).
    pub token: Option<AdminToken>,
    /// Paths answered without a token (`/healthz`).
    pub open_paths: &'static [&'static str],
    /// Where the token is, for the 401 message (never the token itself).
    pub token_hint: String,
}

impl ListenerGuard {
    /// A guard for a loopback-style listener at `addr` with `token`.
    pub fn new(name: &'static str, addr: SocketAddr, token: Option<AdminToken>) -> Self {
        Self {
            name,
            addr,
            hosts: HostNames::Local,
            token,
            open_paths: &["/healthz"],
            token_hint: String::new(),
        }
    }

    /// Sets where a client finds the token (shown when it is missing).
    pub fn with_token_hint(mut self, hint: impl Into<String>) -> Self {
        self.token_hint = hint.into();
        self
    }

    /// The browser checks of a listener inside a Kubernetes cluster (no token: mutual TLS,
    /// or nothing worth a token, protects it): `Host` an IP literal, `localhost` or a
    /// Service name under `.svc` / `.svc.cluster.local`; no foreign `Origin`; JSON bodies
    /// only.
    pub fn in_cluster(name: &'static str, addr: SocketAddr) -> Self {
        Self::new(name, addr, None).with_hosts(HostNames::Suffixes(vec![
            ".svc".to_owned(),
            ".svc.cluster.local".to_owned(),
        ]))
    }

    /// Sets the host names answered to.
    pub fn with_hosts(mut self, hosts: HostNames) -> Self {
        self.hosts = hosts;
        self
    }

    /// `None` when the request may go on; otherwise the response to send instead (a
    /// refusal, or the redirect of a successful `GET /login?token=…`).
    pub fn check(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Option<Response<String>> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| uri.authority().map(|a| a.as_str().to_owned()));
        let Some(host) = host else {
            return Some(refuse(
                StatusCode::BAD_REQUEST,
                format!("{}: the request has no Host header", self.name),
            ));
        };
        if !self.host_allowed(&host) {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "{}: Host {host:?} is not an address of this listener (a DNS-rebinding \
                     page?); use {} or localhost",
                    self.name, self.addr
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let own = origin.to_str().is_ok_and(|o| self.origin_allowed(o));
            if !own {
                return Some(refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{}: cross-origin request refused (Origin {:?} is not this listener's own)",
                        self.name,
                        String::from_utf8_lossy(origin.as_bytes())
                    ),
                ));
            }
        }
        if headers
            .get("sec-fetch-site")
            .is_some_and(|s| s.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "{}: cross-site request refused (Sec-Fetch-Site: cross-site)",
                    self.name
                ),
            ));
        }
        if let Some(token) = &self.token {
            let path = uri.path();
            if path == LOGIN_PATH && *method == Method::GET {
                return Some(self.login(token, uri.query().unwrap_or_default()));
            }
            if !self.open_paths.contains(&path)
                && let Some(refusal) = self.authenticate(token, headers)
            {
                return Some(refusal);
            }
        }
        let unsafe_method = !matches!(*method, Method::GET | Method::HEAD);
        if unsafe_method && !json_or_yaml(headers) {
            let got = headers
                .get(header::CONTENT_TYPE)
                .map(|v| format!("{:?}", String::from_utf8_lossy(v.as_bytes())))
                .unwrap_or_else(|| "none".to_owned());
            return Some(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{}: {method} needs Content-Type application/json (or application/yaml); \
                     got {got}",
                    self.name
                ),
            ));
        }
        None
    }

    fn authenticate(&self, token: &AdminToken, headers: &HeaderMap) -> Option<Response<String>> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or_default());
        let presented = match bearer {
            Some(v) => {
                let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Some(self.unauthorized(
                        "the Authorization header is not a bearer token (expected \
                         `Authorization: Bearer <token>`)",
                    ));
                }
                Some(rest.trim().to_owned())
            }
            None => cookie(headers, COOKIE_NAME),
        };
        match presented {
            None => Some(self.unauthorized(&format!(
                "missing credential: send `Authorization: Bearer <token>`{}",
                self.hint()
            ))),
            Some(p) if token.matches(&p) => None,
            Some(_) => Some(self.unauthorized("invalid bearer token")),
        }
    }

    fn hint(&self) -> String {
        if self.token_hint.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.token_hint)
        }
    }

    fn unauthorized(&self, why: &str) -> Response<String> {
        let mut resp = refuse(StatusCode::UNAUTHORIZED, format!("{}: {why}", self.name));
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sluice\""),
        );
        resp
    }

    /// `GET /login?token=…`: the token for an `HttpOnly`, `SameSite=Strict` cookie, then
    /// a redirect to `/` without the token in the address bar.
    fn login(&self, token: &AdminToken, query: &str) -> Response<String> {
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v)
        };
        let presented = param("token");
        // Where to go after: a path of this listener only (no scheme, no `//host`).
        let next = param("next")
            .filter(|n| {
                n.starts_with('/')
                    && !n.starts_with("//")
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
            })
            .unwrap_or("/");
        match presented {
            Some(p) if token.matches(p) => {
                let mut resp = Response::new(String::new());
                *resp.status_mut() = StatusCode::SEE_OTHER;
                let cookie = format!(
                    "{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path=/",
                    token.secret()
                );
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    resp.headers_mut().insert(header::SET_COOKIE, v);
                }
                if let Ok(v) = HeaderValue::from_str(next) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp
            }
            Some(_) => self.unauthorized("invalid token in the login link"),
            None => self.unauthorized("the login link has no token (`/login?token=<token>`)"),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if let Ok(ip) = name.parse::<IpAddr>() {
            let bound = self.addr.ip();
            return ip == bound
                || bound.is_unspecified()
                || (bound.is_loopback() && ip.is_loopback());
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let local = self.addr.ip().is_loopback() || self.addr.ip().is_unspecified();
        if name == "localhost" && local {
            return true;
        }
        match &self.hosts {
            HostNames::Local => false,
            HostNames::Suffixes(suffixes) => suffixes.iter().any(|s| name.ends_with(s.as_str())),
        }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        if !matches!(scheme, "http" | "https") || rest.contains('/') {
            return false;
        }
        let default_port = if scheme == "http" { 80 } else { 443 };
        let port = port_of(rest).unwrap_or(default_port);
        port == self.addr.port() && self.host_allowed(rest)
    }
}

/// The host of a `Host`/authority value without its port (`[::1]:8081` → `::1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn port_of(host: &str) -> Option<u16> {
    let tail = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.1.strip_prefix(':')?,
        None => host.rsplit_once(':')?.1,
    };
    tail.parse().ok()
}

fn json_or_yaml(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/json" | "application/yaml" | "application/x-yaml"
    )
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A refusal in the body shape of Sluice's JSON APIs: `{"error": "…"}`.
fn refuse(status: StatusCode, message: String) -> Response<String> {
    let body = serde_json::to_string(&sluice_core::ErrorBody::new(message)).unwrap_or_default();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn guard() -> (ListenerGuard, AdminToken) {
        let token = AdminToken::generate().unwrap();
        let g = ListenerGuard::new(
            "the admin API",
            "127.0.0.1:8081".parse().unwrap(),
            Some(token.clone()),
        )
        .with_token_hint("the token is in .sluice/admin-token");
        (g, token)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn status(g: &ListenerGuard, method: Method, path: &str, h: &[(&str, &str)]) -> u16 {
        g.check(&method, &path.parse().unwrap(), &headers(h))
            .map_or(0, |r| r.status().as_u16())
    }

    #[test]
    fn the_text_plain_attack_is_refused_with_or_without_the_token() {
        let (g, token) = guard();
        let bearer = format!("Bearer {}", token.secret());
        // What a hostile page sends: a CORS simple request, no token.
        let page = [
            ("host", "127.0.0.1:8081"),
            ("content-type", "text/plain"),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(status(&g, Method::POST, "/v1/apply", &page), 403);
        // Without an Origin (another local user): no token, 401.
        let local = [("host", "127.0.0.1:8081"), ("content-type", "text/plain")];
        assert_eq!(status(&g, Method::POST, "/v1/apply", &local), 401);
        // With the token, text/plain is still refused: only JSON or YAML bodies.
        let with_token = [
            ("host", "127.0.0.1:8081"),
            ("content-type", "text/plain"),
            ("authorization", &bearer),
        ];
        let resp = g
            .check(
                &Method::POST,
                &"/v1/apply".parse().unwrap(),
                &headers(&with_token),
            )
            .unwrap();
        assert_eq!(resp.status(), 415);
        assert!(
            resp.body().contains("Content-Type application/json"),
            "{}",
            resp.body()
        );
        let ok = [
            ("host", "127.0.0.1:8081"),
            ("content-type", "application/json; charset=utf-8"),
            ("authorization", &bearer),
        ];
        assert_eq!(status(&g, Method::POST, "/v1/apply", &ok), 0);
        let yaml = [
            ("host", "localhost:8081"),
            ("content-type", "application/yaml"),
            ("authorization", &bearer),
        ];
        assert_eq!(status(&g, Method::PUT, "/v1/ksvc/default/a", &yaml), 0);
    }

    #[test]
    fn a_missing_or_wrong_token_is_a_401_that_never_hints_at_the_token() {
        let (g, token) = guard();
        let uri = "/v1/ksvc".parse().unwrap();
        let missing = g
            .check(&Method::GET, &uri, &headers(&[("host", "127.0.0.1:8081")]))
            .unwrap();
        assert_eq!(missing.status(), 401);
        assert!(
            missing.body().contains("missing credential"),
            "{}",
            missing.body()
        );
        assert!(
            missing.body().contains(".sluice/admin-token"),
            "{}",
            missing.body()
        );
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"sluice\""
        );
        let mut wrong = token.secret().to_owned();
        wrong.replace_range(..1, if wrong.starts_with('0') { "1" } else { "0" });
        let resp = g
            .check(
                &Method::GET,
                &uri,
                &headers(&[
                    ("host", "127.0.0.1:8081"),
                    ("authorization", &format!("Bearer {wrong}")),
                ]),
            )
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert!(
            !resp.body().contains(&token.secret()[..8]),
            "{}",
            resp.body()
        );
        let basic = [
            ("host", "127.0.0.1:8081"),
            ("authorization", "Basic dXNlcjpwYXNz"),
        ];
        assert_eq!(status(&g, Method::GET, "/v1/ksvc", &basic), 401);
        let good = [
            ("host", "127.0.0.1:8081"),
            ("authorization", &format!("bearer {}", token.secret())),
        ];
        assert_eq!(status(&g, Method::GET, "/v1/ksvc", &good), 0);
        // The health check is open.
        assert_eq!(
            status(&g, Method::GET, "/healthz", &[("host", "127.0.0.1:8081")]),
            0
        );
    }

    #[test]
    fn rebinding_hosts_and_foreign_origins_are_refused() {
        let (g, token) = guard();
        let bearer = format!("Bearer {}", token.secret());
        for host in [
            "evil.example:8081",
            "evil.example",
            "10.0.0.1:8081",
            "localhost.evil.example:8081",
        ] {
            assert_eq!(
                status(&g, Method::GET, "/healthz", &[("host", host)]),
                403,
                "{host}"
            );
            assert_eq!(
                status(
                    &g,
                    Method::GET,
                    "/v1/ksvc",
                    &[("host", host), ("authorization", &bearer)]
                ),
                403,
                "{host}"
            );
        }
        for host in [
            "127.0.0.1:8081",
            "localhost:8081",
            "LOCALHOST",
            "127.0.0.1",
            "127.0.0.2:8081",
        ] {
            assert_eq!(
                status(
                    &g,
                    Method::GET,
                    "/v1/ksvc",
                    &[("host", host), ("authorization", &bearer)]
                ),
                0,
                "{host}"
            );
        }
        assert_eq!(
            status(&g, Method::GET, "/v1/ksvc", &[("authorization", &bearer)]),
            400
        );
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:8080",
            "https://127.0.0.1:8081.evil",
            "http://localhost:8081/x",
        ] {
            let h = [
                ("host", "127.0.0.1:8081"),
                ("authorization", &bearer),
                ("origin", origin),
            ];
            assert_eq!(status(&g, Method::GET, "/v1/ksvc", &h), 403, "{origin}");
        }
        for origin in ["http://127.0.0.1:8081", "http://localhost:8081"] {
            let h = [
                ("host", "127.0.0.1:8081"),
                ("authorization", &bearer),
                ("origin", origin),
            ];
            assert_eq!(status(&g, Method::GET, "/v1/ksvc", &h), 0, "{origin}");
        }
        let cross = [
            ("host", "127.0.0.1:8081"),
            ("authorization", &bearer),
            ("sec-fetch-site", "cross-site"),
        ];
        assert_eq!(status(&g, Method::GET, "/v1/ksvc", &cross), 403);
    }

    #[test]
    fn an_unspecified_bind_accepts_ip_literals_and_listed_suffixes_only() {
        let g = ListenerGuard::new("metrics", "0.0.0.0:9090".parse().unwrap(), None).with_hosts(
            HostNames::Suffixes(vec![".svc".into(), ".svc.cluster.local".into()]),
        );
        for host in [
            "10.1.2.3:9090",
            "[::1]:9090",
            "localhost:9090",
            "router.sluice-system.svc:9090",
            "a.b.svc.cluster.local",
        ] {
            assert_eq!(
                status(&g, Method::GET, "/metrics", &[("host", host)]),
                0,
                "{host}"
            );
        }
        assert_eq!(
            status(
                &g,
                Method::GET,
                "/metrics",
                &[("host", "evil.example:9090")]
            ),
            403
        );
        // No token configured: requests need none, but unsafe methods still need JSON.
        assert_eq!(
            status(
                &g,
                Method::POST,
                "/v1/stats",
                &[("host", "10.1.2.3"), ("content-type", "text/plain")]
            ),
            415
        );
    }

    #[test]
    fn login_sets_a_strict_http_only_cookie_that_then_authenticates() {
        let (g, token) = guard();
        let uri = format!("/login?token={}", token.secret()).parse().unwrap();
        let resp = g
            .check(&Method::GET, &uri, &headers(&[("host", "127.0.0.1:8081")]))
            .unwrap();
        assert_eq!(resp.status(), 303);
        assert_eq!(resp.headers()[header::LOCATION], "/");
        // `next` leads to a path of this listener, never elsewhere.
        for (next, want) in [
            ("/ui", "/ui"),
            ("//evil.example", "/"),
            ("https://evil.example", "/"),
            ("/%2F%2Fevil", "/"),
        ] {
            let uri = format!("/login?token={}&next={next}", token.secret())
                .parse()
                .unwrap();
            let resp = g
                .check(&Method::GET, &uri, &headers(&[("host", "127.0.0.1:8081")]))
                .unwrap();
            assert_eq!(resp.headers()[header::LOCATION], want, "{next}");
        }
        let cookie = resp.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap();
        let h = [
            ("host", "127.0.0.1:8081"),
            ("cookie", &format!("other=1; {pair}")),
        ];
        assert_eq!(status(&g, Method::GET, "/v1/ksvc", &h), 0);
        let bad = "/login?token=nope".parse().unwrap();
        let resp = g
            .check(&Method::GET, &bad, &headers(&[("host", "127.0.0.1:8081")]))
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().get(header::SET_COOKIE).is_none());
    }

    #[test]
    fn the_token_file_is_private_and_reused_and_a_loose_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-guard-{}", uuid::Uuid::new_v4()));
        let state = dir.join("state");
        let first = AdminToken::load_or_create(&state).unwrap();
        let file = state.join(TOKEN_FILE);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&state), 0o700);
        assert_eq!(first.secret().len(), 64);
        let again = AdminToken::load_or_create(&state).unwrap();
        assert!(again.matches(first.secret()));
        assert_ne!(AdminToken::generate().unwrap().secret(), first.secret());
        // A state directory others can enter is narrowed; a token file they can read is refused.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AdminToken::load_or_create(&state).unwrap_err().to_string();
        assert!(
            err.contains("accessible to other users (mode 0644)"),
            "{err}"
        );
        assert!(err.contains("chmod 600"), "{err}");
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&file, "short\n").unwrap();
        let err = AdminToken::load_or_create(&state).unwrap_err().to_string();
        assert!(err.contains("holds no token"), "{err}");
        assert!(!format!("{first:?}").contains(first.secret()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
