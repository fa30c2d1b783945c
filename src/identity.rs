//! DID -> PDS endpoint + signing key: did:plc through the configured PLC directory, did:web
//! through its host's `/.well-known/did.json` (or path form), with a cache that expires.
//!
//! The DID document is jacquard's model; this module only fetches it and reads the PDS endpoint
//! and the `#atproto` key, in the Multikey form or the legacy `EcdsaSecp256k1VerificationKey2019`
//! / `EcdsaSecp256r1VerificationKey2019` form some PLC servers still return (the key then has no
//! multicodec prefix and may be uncompressed). A did:web host that is `localhost` or 127.0.0.1
//! is fetched over plain HTTP, so the devnet can serve it; every other host needs HTTPS.
//!
//! The PLC directory is the operator's choice and trusted as given; a did:web host and the PDS
//! endpoint a document names are the network's, so the outbound address policy
//! ([`crate::http::policy`]) holds for them: a did:web document is fetched by a guarded client,
//! and a document whose PDS endpoint is a refused IP literal is refused when it is read (a host
//! name is checked when the backfill's guarded client connects). A document is read up to
//! [`MAX_DOCUMENT_BYTES`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jacquard_common::types::crypto::{CryptoError, KeyCodec, PublicKey};
use jacquard_common::types::did_doc::DidDocument;

use crate::http::{AddressPolicy, AddressRefused, BodyError, Deadlines, read_capped, retry_after, truncate_foreign};

/// The largest DID document read (a real one is 1-2 KiB; a PLC document's size is capped by
/// the directory, a did:web host's is not).
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// A resolved identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The DID.
    pub did: String,
    /// The PDS base URL, without a trailing `/`.
    pub pds: String,
    /// The repo signing key.
    pub key: PublicKey<'static>,
    /// The first `at://` handle of `alsoKnownAs`, when there is one.
    pub handle: Option<String>,
}

/// Why a DID did not resolve, by what a caller should do about it.
///
/// Permanent ([`is_permanent`](Self::is_permanent): asking again gives the same answer until
/// the identity changes, for example an `#identity` frame): `NotFound`, `InvalidDocument`
/// (a PDS endpoint at a refused address and a document over [`MAX_DOCUMENT_BYTES`]
/// included), `Refused`, `Unsupported`. Transient (worth retrying with backoff):
/// `RateLimited`, `Transport`.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The directory or host does not know the DID (tombstoned or never created).
    #[error("{0}: DID not found")]
    NotFound(String),
    /// The directory asked us to slow down.
    #[error("{did}: identity lookup rate limited")]
    RateLimited { did: String, retry_after: Option<Duration> },
    /// Network failure, timeout or server error: worth retrying.
    #[error("{did}: identity lookup failed")]
    Transport { did: String, source: TransportError },
    /// The document is there but unusable (bad JSON, wrong id, no key or PDS).
    #[error("{did}: invalid DID document")]
    InvalidDocument { did: String, source: DocumentError },
    /// Not did:plc or did:web, or not a DID.
    #[error("{0}: unsupported DID")]
    Unsupported(String),
    /// The did:web host is at an address the outbound policy refuses.
    #[error("{did}: DID document host refused")]
    Refused { did: String, source: AddressRefused },
}

impl IdentityError {
    /// Whether asking again is pointless until the identity changes (see the type's doc).
    pub fn is_permanent(&self) -> bool {
        match self {
            IdentityError::NotFound(_)
            | IdentityError::InvalidDocument { .. }
            | IdentityError::Unsupported(_)
            | IdentityError::Refused { .. } => true,
            IdentityError::RateLimited { .. } | IdentityError::Transport { .. } => false,
        }
    }
}

/// How fetching a DID document failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The request failed (connection, TLS, timeout) or its body did not arrive.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// The server answered an error.
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: reqwest::StatusCode },
}

/// What makes a DID document unusable.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON, or not a DID document's.
    #[error("not a DID document")]
    Json(#[source] serde_json::Error),
    /// The document's `id` is another DID.
    #[error("document is for {0}")]
    OtherDid(String),
    /// No PDS service.
    #[error("no AtprotoPersonalDataServer service")]
    NoPds,
    /// The PDS endpoint is not `http(s)://`.
    #[error("PDS endpoint {0} is not an HTTP URL")]
    PdsNotHttp(String),
    /// The PDS endpoint is at an address the outbound policy refuses.
    #[error("PDS endpoint {endpoint} refused")]
    PdsRefused { endpoint: String, source: AddressRefused },
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error(transparent)]
    TooLarge(BodyError),
    /// No `#atproto` verification method.
    #[error("no #atproto verification method")]
    NoKey,
    /// The `#atproto` method has no key.
    #[error("the #atproto key has no publicKeyMultibase")]
    NoMultibase,
    /// The key is of a type sluice does not check.
    #[error("unsupported key type {0}")]
    KeyType(String),
    /// The Multikey does not decode.
    #[error("bad Multikey")]
    Multikey(#[source] CryptoError),
    /// The legacy key's multibase does not decode.
    #[error("bad legacy key")]
    LegacyKey(#[source] multibase::Error),
    /// The key's bytes are not a point of its curve.
    #[error("{0:?} key is not a valid curve point")]
    CurvePoint(KeyCodec),
}

/// Resolver settings.
#[derive(Debug, Clone)]
pub struct ResolverOptions {
    /// PLC directory base URL, ending with `/`.
    pub plc_url: String,
    /// How long a resolved identity is reused.
    pub ttl: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Most identities cached.
    pub capacity: usize,
    /// The addresses did:web hosts and PDS endpoints may be at (public only by default;
    /// `[network]` opens more).
    pub policy: AddressPolicy,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        Self {
            plc_url: "https://plc.directory/".into(),
            ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            capacity: 100_000,
            policy: AddressPolicy::public_only(),
        }
    }
}

/// Resolves DIDs, caching results for `ttl`.
pub struct Resolver {
    /// For the PLC directory (trusted).
    plc: reqwest::Client,
    /// For did:web hosts (guarded by the address policy).
    web: reqwest::Client,
    opts: ResolverOptions,
    cache: Mutex<HashMap<String, (Instant, Arc<Identity>)>>,
}

impl Resolver {
    /// A resolver with its own HTTP client.
    pub fn new(mut opts: ResolverOptions) -> Self {
        if !opts.plc_url.ends_with('/') {
            opts.plc_url.push('/');
        }
        let deadlines = Deadlines::SMALL.with_total(opts.timeout);
        let plc = deadlines.apply(crate::http::client_builder()).build().expect("HTTP client");
        let web = opts.policy.guarded(deadlines.apply(crate::http::client_builder())).build().expect("HTTP client");
        Self { plc, web, opts, cache: Mutex::new(HashMap::new()) }
    }

    /// The identity of `did`, from the cache while it is fresh.
    pub async fn resolve(&self, did: &str) -> Result<Arc<Identity>, IdentityError> {
        match self.cached(did) {
            Some(identity) => Ok(identity),
            None => self.refresh(did).await,
        }
    }

    /// The identity of `did` if the cache holds a fresh one (no I/O; for synchronous callers).
    pub fn cached(&self, did: &str) -> Option<Arc<Identity>> {
        let cache = self.cache.lock().expect("identity cache");
        cache.get(did).filter(|(at, _)| at.elapsed() < self.opts.ttl).map(|(_, id)| id.clone())
    }

    /// The identity of `did`, fetched now (for example after a signature failed with the
    /// cached key).
    pub async fn refresh(&self, did: &str) -> Result<Arc<Identity>, IdentityError> {
        let url = document_url(did, &self.opts.plc_url)?;
        let body = self.fetch(did, &url).await?;
        let identity = Arc::new(identity_from_document(did, &body)?);
        if let Err(source) = self.opts.policy.check_url_str(&identity.pds) {
            let source = DocumentError::PdsRefused { endpoint: truncate_foreign(&identity.pds), source };
            return Err(IdentityError::InvalidDocument { did: did.into(), source });
        }
        let mut cache = self.cache.lock().expect("identity cache");
        if cache.len() >= self.opts.capacity {
            let ttl = self.opts.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= self.opts.capacity {
                cache.clear();
            }
        }
        cache.insert(did.to_string(), (Instant::now(), identity.clone()));
        Ok(identity)
    }

    /// Caches `identity` as if it had just been resolved (benchmarks, and callers that know a
    /// DID's document already).
    pub fn prime(&self, identity: Identity) {
        self.cache.lock().expect("identity cache").insert(identity.did.clone(), (Instant::now(), Arc::new(identity)));
    }

    /// Forgets `did`, so the next resolve fetches it.
    pub fn invalidate(&self, did: &str) {
        self.cache.lock().expect("identity cache").remove(did);
    }

    /// The document at `url`, at most [`MAX_DOCUMENT_BYTES`]; a did:web host through the
    /// guarded client.
    async fn fetch(&self, did: &str, url: &str) -> Result<bytes::Bytes, IdentityError> {
        let transport = |source: TransportError| IdentityError::Transport { did: did.into(), source };
        let refused = |source: AddressRefused| IdentityError::Refused { did: did.into(), source };
        let http = match did.starts_with("did:web:") {
            true => {
                self.opts.policy.check_url_str(url).map_err(refused)?;
                &self.web
            }
            false => &self.plc,
        };
        let resp = http.get(url).send().await.map_err(|e| match crate::http::address_refused(&e) {
            Some(refusal) => refused(refusal.clone()),
            None => transport(e.into()),
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Err(IdentityError::NotFound(did.into()));
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(IdentityError::RateLimited { did: did.into(), retry_after: retry_after(resp.headers()) });
        }
        if !status.is_success() {
            return Err(transport(TransportError::Status { url: url.to_string(), status }));
        }
        read_capped(resp, MAX_DOCUMENT_BYTES, "DID document").await.map_err(|e| match e {
            BodyError::Read(e) => transport(e.into()),
            too_large => IdentityError::InvalidDocument { did: did.into(), source: DocumentError::TooLarge(too_large) },
        })
    }
}

/// Where the document of `did` lives.
pub fn document_url(did: &str, plc_url: &str) -> Result<String, IdentityError> {
    if !crate::syntax::is_did(did) {
        return Err(IdentityError::Unsupported(did.into()));
    }
    if let Some(id) = did.strip_prefix("did:plc:") {
        return Ok(format!("{plc_url}did:plc:{id}"));
    }
    let Some(rest) = did.strip_prefix("did:web:") else {
        return Err(IdentityError::Unsupported(did.into()));
    };
    let mut parts = rest.split(':');
    let host = parts.next().unwrap_or_default().replace("%3A", ":").replace("%3a", ":");
    let path: Vec<&str> = parts.collect();
    let bare_host = host.split(':').next().unwrap_or_default();
    let scheme = if bare_host == "localhost" || bare_host == "127.0.0.1" { "http" } else { "https" };
    Ok(match path.is_empty() {
        true => format!("{scheme}://{host}/.well-known/did.json"),
        false => format!("{scheme}://{host}/{}/did.json", path.join("/")),
    })
}

/// Reads the PDS endpoint, signing key and handle of `did` from its document's JSON.
pub fn identity_from_document(did: &str, json: &[u8]) -> Result<Identity, IdentityError> {
    let invalid = |source: DocumentError| IdentityError::InvalidDocument { did: did.into(), source };
    let doc: DidDocument = serde_json::from_slice(json).map_err(|e| invalid(DocumentError::Json(e)))?;
    if doc.id.as_str() != did {
        return Err(invalid(DocumentError::OtherDid(truncate_foreign(doc.id.as_str()))));
    }
    let pds = doc.pds_endpoint().ok_or_else(|| invalid(DocumentError::NoPds))?;
    let pds = pds.as_str().trim_end_matches('/').to_string();
    if !(pds.starts_with("https://") || pds.starts_with("http://")) {
        return Err(invalid(DocumentError::PdsNotHttp(truncate_foreign(&pds))));
    }
    let key = signing_key(&doc).map_err(invalid)?;
    let handle = doc.handles().first().map(|h| h.as_str().to_string());
    Ok(Identity { did: did.into(), pds, key, handle })
}

/// The `#atproto` verification method's key, in either form.
fn signing_key(doc: &DidDocument) -> Result<PublicKey<'static>, DocumentError> {
    let methods = doc.verification_method.as_deref().unwrap_or_default();
    let method = methods.iter().find(|m| m.id.as_str().ends_with("#atproto")).ok_or(DocumentError::NoKey)?;
    let multibase = method.public_key_multibase.as_ref().ok_or(DocumentError::NoMultibase)?.as_str();
    let legacy = match method.r#type.as_str() {
        "Multikey" => None,
        "EcdsaSecp256k1VerificationKey2019" => Some(KeyCodec::Secp256k1),
        "EcdsaSecp256r1VerificationKey2019" => Some(KeyCodec::P256),
        other => return Err(DocumentError::KeyType(truncate_foreign(other))),
    };
    let key = match legacy {
        None => PublicKey::decode(multibase).map_err(DocumentError::Multikey)?,
        Some(codec) => {
            let (_, bytes) = multibase::decode(multibase).map_err(DocumentError::LegacyKey)?;
            PublicKey { codec, bytes: Cow::Owned(bytes) }
        }
    };
    let usable = match key.codec {
        // libsecp256k1 parses a key in a third of k256's time.
        KeyCodec::Secp256k1 => secp256k1::PublicKey::from_slice(&key.bytes).is_ok(),
        KeyCodec::P256 => key.to_p256().is_ok(),
        _ => false,
    };
    match usable {
        true => Ok(key),
        false => Err(DocumentError::CurvePoint(key.codec)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn random_bytes_are_refused_without_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let refused = identity_from_document("did:plc:abc", &bytes);
            let invalid = matches!(refused, Err(IdentityError::InvalidDocument { .. }));
            proptest::prop_assert!(invalid, "{:?}", refused);
        }
    }

    #[test]
    fn document_urls_by_method() {
        let plc = "http://127.0.0.1:1/";
        assert_eq!(document_url("did:plc:abc", plc).unwrap(), "http://127.0.0.1:1/did:plc:abc");
        assert_eq!(document_url("did:web:example.com", plc).unwrap(), "https://example.com/.well-known/did.json");
        assert_eq!(document_url("did:web:127.0.0.1%3A8080:u:7", plc).unwrap(), "http://127.0.0.1:8080/u/7/did.json");
        assert!(matches!(document_url("did:key:zabc", plc), Err(IdentityError::Unsupported(_))));
        assert!(matches!(document_url("nope", plc), Err(IdentityError::Unsupported(_))));
    }
}
