//! Signed caller attestation: how the original caller's identity survives the activator hop.
//!
//! Behind Knative's activator every request seems to come from the activator. In Sluice the
//! activator, having verified the caller's mTLS identity, signs a short-lived statement
//! "this request (method, authority, path, request id) came from `caller`" with its own SVID
//! key, and sends it in [`HEADER`] together with its certificate. The replica accepts it only
//! when
//!
//! * the signer's certificate is a valid SVID of the mesh CA, and the signer is one of the
//!   workloads trusted to attest (the activator's identity),
//! * the signer is the mTLS peer of the very connection the request arrived on (so a captured
//!   header cannot be replayed by anyone else, and a plaintext hop cannot carry one),
//! * the signature verifies, the statement names this request, and it is fresh.
//!
//! A header anyone could set is worth nothing; this one is bound to a key only the activator
//! holds.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::HeaderValue;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls::pki_types::UnixTime;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;

use crate::identity::{CLOCK_SKEW, RotatingSvid, SpiffeId, SvidError, TrustBundle, Usage};
use crate::tls::ConnectionSecurity;

/// The request header carrying the attestation.
pub const HEADER: &str = "x-sluice-caller-attestation";
/// Largest header value accepted, in bytes.
pub const MAX_HEADER_LEN: usize = 8 * 1024;
/// Longest validity a statement may claim.
pub const MAX_TTL: Duration = Duration::from_secs(60);
/// Default validity of a statement.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

const FORMAT: &str = "v1";
/// The mTLS-bound form: `m1.<statement>`, unsigned, accepted only from a connection whose
/// verified mTLS peer is a trusted attester (only the holder of that workload's key can open
/// one, so nobody else can make a replica believe it).
const BOUND_FORMAT: &str = "m1";

/// How an [`Attester`] vouches for callers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttestationMode {
    /// ECDSA-signed with the attester's SVID key, its certificate attached (verifiable by
    /// anyone holding the trust bundle, and still bound to the mTLS peer).
    #[default]
    Signed,
    /// Bound to the mTLS connection it travels on: no signature, so no per-request ECDSA on
    /// either side; the replica accepts it only from a trusted attester's mTLS connection.
    MtlsBound,
}
const DOMAIN: &[u8] = b"sluice caller attestation v1\n";

/// The request an attestation is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestBinding<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Authority (Host).
    pub authority: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// `x-request-id`.
    pub request_id: &'a str,
}

/// The signed statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Statement {
    /// The original caller's SPIFFE ID; `None` when it came in plaintext.
    caller: Option<String>,
    /// `mutual_tls` or `none`: how the caller reached the signer.
    security: String,
    method: String,
    authority: String,
    path: String,
    request_id: String,
    /// Issued at, unix seconds.
    iat: u64,
    /// Expires at, unix seconds.
    exp: u64,
}

/// What a verified attestation says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attested {
    /// The original caller; `None` when it was not authenticated.
    pub caller: Option<SpiffeId>,
    /// How the original caller reached the signer.
    pub security: ConnectionSecurity,
    /// The workload that signed (the activator).
    pub signer: SpiffeId,
}

/// Why an attestation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// Longer than [`MAX_HEADER_LEN`].
    #[error("{HEADER}: {0} bytes, more than 8192")]
    TooLong(usize),
    /// Not `v1.<statement>.<signature>.<certificate>` in base64url.
    #[error("{HEADER}: malformed ({0})")]
    Malformed(&'static str),
    /// The signer's certificate is not a valid SVID.
    #[error("{HEADER}: signer certificate refused: {0}")]
    Signer(#[source] SvidError),
    /// The signer is not allowed to attest.
    #[error("{HEADER}: {0} is not trusted to attest callers")]
    UntrustedSigner(String),
    /// The request did not arrive over mTLS from the signer.
    #[error("{HEADER}: signed by {signer} but the connection's peer is {peer}")]
    NotFromSigner {
        /// Who signed.
        signer: String,
        /// Who the mTLS peer is (`none` for plaintext).
        peer: String,
    },
    /// The signature does not verify.
    #[error("{HEADER}: bad signature")]
    BadSignature,
    /// The statement is about another request.
    #[error("{HEADER}: bound to another request ({0} differs)")]
    WrongRequest(&'static str),
    /// Expired, not yet valid, or claiming too long a life.
    #[error("{HEADER}: not fresh (issued {iat}, expires {exp}, now {now})")]
    Stale {
        /// Issued at.
        iat: u64,
        /// Expires at.
        exp: u64,
        /// Verifier time.
        now: u64,
    },
    /// Signing failed (the SVID key did not load).
    #[error("signing the attestation failed: {0}")]
    Signing(&'static str),
}

/// Signs attestations with the current SVID (the activator's side).
pub struct Attester {
    identity: RotatingSvid,
    ttl: Duration,
    mode: AttestationMode,
    rng: SystemRandom,
    cached: Mutex<Option<(Vec<u8>, Arc<EcdsaKeyPair>)>>,
}

impl std::fmt::Debug for Attester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attester")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Attester {
    /// An attester signing as `identity`, statements valid for [`DEFAULT_TTL`].
    pub fn new(identity: RotatingSvid) -> Self {
        Self {
            identity,
            ttl: DEFAULT_TTL,
            mode: AttestationMode::Signed,
            rng: SystemRandom::new(),
            cached: Mutex::new(None),
        }
    }

    /// Changes how statements are vouched for.
    pub fn with_mode(mut self, mode: AttestationMode) -> Self {
        self.mode = mode;
        self
    }

    /// Changes the statement life (capped at [`MAX_TTL`]).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.min(MAX_TTL);
        self
    }

    fn key(&self) -> Result<(Vec<u8>, Arc<EcdsaKeyPair>), AttestationError> {
        let svid = self.identity.current();
        let cert = svid.cert_der().to_vec();
        let mut cached = self
            .cached
            .lock()
            .map_err(|_| AttestationError::Signing("key cache poisoned"))?;
        if let Some((c, key)) = cached.as_ref()
            && *c == cert
        {
            return Ok((cert, key.clone()));
        }
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            svid.key_der().secret_pkcs8_der(),
            &self.rng,
        )
        .map_err(|_| AttestationError::Signing("SVID key is not ECDSA P-256 PKCS#8"))?;
        let key = Arc::new(key);
        *cached = Some((cert.clone(), key.clone()));
        Ok((cert, key))
    }

    /// The header value attesting that `request` came from `caller` over `security`.
    pub fn attest(
        &self,
        caller: Option<&SpiffeId>,
        security: ConnectionSecurity,
        request: RequestBinding<'_>,
        now: UnixTime,
    ) -> Result<HeaderValue, AttestationError> {
        let statement = Statement {
            caller: caller.map(ToString::to_string),
            security: security.label().to_owned(),
            method: request.method.to_owned(),
            authority: request.authority.to_owned(),
            path: request.path.to_owned(),
            request_id: request.request_id.to_owned(),
            iat: now.as_secs(),
            exp: now.as_secs() + self.ttl.as_secs(),
        };
        let payload = serde_json::to_vec(&statement)
            .map_err(|_| AttestationError::Signing("statement did not serialize"))?;
        if self.mode == AttestationMode::MtlsBound {
            return HeaderValue::from_str(&format!("{BOUND_FORMAT}.{}", B64.encode(&payload)))
                .map_err(|_| AttestationError::Signing("not a header value"));
        }
        let (cert, key) = self.key()?;
        let signature = key
            .sign(&self.rng, &[DOMAIN, &payload].concat())
            .map_err(|_| AttestationError::Signing("ECDSA signing failed"))?;
        let value = format!(
            "{FORMAT}.{}.{}.{}",
            B64.encode(&payload),
            B64.encode(signature.as_ref()),
            B64.encode(&cert)
        );
        HeaderValue::from_str(&value).map_err(|_| AttestationError::Signing("not a header value"))
    }
}

/// Verifies attestations (the replica's side).
#[derive(Clone, Debug)]
pub struct AttestationVerifier {
    bundle: Arc<TrustBundle>,
    trusted: BTreeSet<SpiffeId>,
}

impl AttestationVerifier {
    /// Accepts statements signed by any of `trusted` (e.g. the activator) under `bundle`.
    pub fn new(bundle: Arc<TrustBundle>, trusted: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self {
            bundle,
            trusted: trusted.into_iter().collect(),
        }
    }

    /// Verifies `value`, received over a connection whose verified mTLS peer is `peer`, for
    /// `request`, at `now`.
    pub fn verify(
        &self,
        value: &HeaderValue,
        peer: Option<&SpiffeId>,
        request: RequestBinding<'_>,
        now: UnixTime,
    ) -> Result<Attested, AttestationError> {
        use AttestationError as E;
        if value.len() > MAX_HEADER_LEN {
            return Err(E::TooLong(value.len()));
        }
        let text = value.to_str().map_err(|_| E::Malformed("not ASCII"))?;
        if let Some(payload) = text
            .strip_prefix(BOUND_FORMAT)
            .and_then(|t| t.strip_prefix('.'))
        {
            // mTLS-bound: the connection's verified peer must be a trusted attester.
            let signer = peer.cloned().ok_or_else(|| E::NotFromSigner {
                signer: "a trusted attester".into(),
                peer: "none".into(),
            })?;
            if !self.trusted.contains(&signer) {
                return Err(E::UntrustedSigner(signer.to_string()));
            }
            let payload = B64
                .decode(payload)
                .map_err(|_| E::Malformed("statement is not base64url"))?;
            return finish(&payload, request, now, signer);
        }
        let mut parts = text.split('.');
        let (Some(FORMAT), Some(payload), Some(signature), Some(cert), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(E::Malformed(
                "expected v1.<statement>.<signature>.<certificate>",
            ));
        };
        let decode = |s: &str, what| B64.decode(s).map_err(|_| E::Malformed(what));
        let payload = decode(payload, "statement is not base64url")?;
        let signature = decode(signature, "signature is not base64url")?;
        let cert = decode(cert, "certificate is not base64url")?;

        let signer = self
            .bundle
            .verify(&cert, Usage::Client, now)
            .map_err(E::Signer)?;
        if !self.trusted.contains(&signer) {
            return Err(E::UntrustedSigner(signer.to_string()));
        }
        if peer != Some(&signer) {
            return Err(E::NotFromSigner {
                signer: signer.to_string(),
                peer: peer.map_or_else(|| "none".to_owned(), ToString::to_string),
            });
        }
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&cert)
            .map_err(|_| E::Malformed("certificate"))?;
        ring::signature::UnparsedPublicKey::new(
            &ECDSA_P256_SHA256_ASN1,
            parsed.public_key().subject_public_key.data.as_ref(),
        )
        .verify(&[DOMAIN, &payload].concat(), &signature)
        .map_err(|_| E::BadSignature)?;

        finish(&payload, request, now, signer)
    }

    /// The caller a policy should see for a request: the attested original caller when the
    /// request carries an attestation (which must then verify), else the connection's peer.
    pub fn effective_caller(
        &self,
        value: Option<&HeaderValue>,
        peer: Option<&SpiffeId>,
        request: RequestBinding<'_>,
        now: UnixTime,
    ) -> Result<Option<SpiffeId>, AttestationError> {
        match value {
            Some(v) => Ok(self.verify(v, peer, request, now)?.caller),
            None => Ok(peer.cloned()),
        }
    }
}

/// Checks a statement's binding to `request` and its freshness at `now`.
fn finish(
    payload: &[u8],
    request: RequestBinding<'_>,
    now: UnixTime,
    signer: SpiffeId,
) -> Result<Attested, AttestationError> {
    use AttestationError as E;
    let statement: Statement =
        serde_json::from_slice(payload).map_err(|_| E::Malformed("statement is not JSON"))?;
    for (field, ours, theirs) in [
        ("method", request.method, &statement.method),
        ("authority", request.authority, &statement.authority),
        ("path", request.path, &statement.path),
        ("request id", request.request_id, &statement.request_id),
    ] {
        if ours != theirs {
            return Err(E::WrongRequest(field));
        }
    }
    let now_s = now.as_secs();
    let skew = CLOCK_SKEW.as_secs();
    if statement.exp < statement.iat
        || statement.exp - statement.iat > MAX_TTL.as_secs()
        || statement.iat > now_s + skew
        || statement.exp + skew < now_s
    {
        return Err(E::Stale {
            iat: statement.iat,
            exp: statement.exp,
            now: now_s,
        });
    }
    let caller = statement
        .caller
        .as_deref()
        .map(str::parse::<SpiffeId>)
        .transpose()
        .map_err(|_| E::Malformed("caller is not a SPIFFE ID"))?;
    let security = match statement.security.as_str() {
        "mutual_tls" if caller.is_some() => ConnectionSecurity::MutualTls,
        "none" if caller.is_none() => ConnectionSecurity::None,
        _ => return Err(E::Malformed("security does not agree with caller")),
    };
    Ok(Attested {
        caller,
        security,
        signer,
    })
}
