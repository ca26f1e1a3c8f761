//! API keys: who may call what, and which tenant's rows they see.
//!
//! ```text
//!   Authorization: Bearer <key> ─▶ sha256(key) in [[auth.keys]]? ── no ──▶ 401
//!                                      │ role allows the endpoint? ── no ──▶ 403
//!                                      ▼
//!                       Principal { role, tenant } in the request's extensions
//!                       (handlers filter rows by `tenant` where it is set)
//! ```
//!
//! Keys are configured as hashes (`sha256:<hex>`), never in clear; `weir key` makes one.
//! Auth is on by default whenever Weir listens on an address other than loopback.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::server::error::ApiError;

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether requests need a key; default: when listening on a non-loopback address.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `[[auth.keys]]`
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

/// One API key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A name for logs.
    pub name: String,
    /// `sha256:<hex of the key's SHA-256>`.
    pub hash: String,
    /// `admin`, `publisher`, `consumer` or `read-only`.
    pub role: Role,
    /// The only tenant the key may write and see, if set.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Send events.
    Publisher,
    /// Read everything, create and drop views and detectors.
    Consumer,
    /// Read everything.
    ReadOnly,
}

/// What an endpoint needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Nothing,
    Publish,
    Read,
    Manage,
    Admin,
}

impl Role {
    fn allows(self, need: Need) -> bool {
        match need {
            Need::Nothing => true,
            Need::Publish => matches!(self, Role::Admin | Role::Publisher),
            Need::Read => matches!(self, Role::Admin | Role::Consumer | Role::ReadOnly),
            Need::Manage => matches!(self, Role::Admin | Role::Consumer),
            Need::Admin => self == Role::Admin,
        }
    }
}

/// Who is calling: handlers find it in the request's extensions.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The key's name (`anonymous` with auth off).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The only tenant it may see, if any.
    pub tenant: Option<String>,
}

impl Principal {
    /// With auth off, every caller is an unscoped admin.
    fn anonymous() -> Principal {
        Principal { name: "anonymous".into(), role: Role::Admin, tenant: None }
    }

    /// Whether it may see rows of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }
}

/// The keys in force.
pub struct Keys {
    enabled: bool,
    by_hash: HashMap<String, Principal>,
}

impl Keys {
    /// The keys of the configuration; `listening_on` decides the default.
    pub fn new(config: &AuthConfig, listening_on: &std::net::SocketAddr) -> anyhow::Result<Arc<Keys>> {
        let enabled = config.enabled.unwrap_or(!listening_on.ip().is_loopback());
        let mut by_hash = HashMap::new();
        for k in &config.keys {
            let Some(hex) = k.hash.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit())) else {
                anyhow::bail!("auth.keys {}: hash must be sha256:<64 hex digits> (make one with `weir key`)", k.name);
            };
            if k.role == Role::Admin && k.tenant.is_some() {
                anyhow::bail!("auth.keys {}: an admin key cannot be scoped to a tenant", k.name);
            }
            by_hash.insert(hex.to_ascii_lowercase(), Principal { name: k.name.clone(), role: k.role, tenant: k.tenant.clone() });
        }
        if enabled && by_hash.is_empty() {
            tracing::warn!("auth is on but no [[auth.keys]] are configured: every request but /livez and /readyz will be refused");
        }
        Ok(Arc::new(Keys { enabled, by_hash }))
    }
}

/// The hash under which a key is configured.
pub fn hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn need(method: &Method, path: &str) -> Need {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (_, ["livez"] | ["readyz"]) => Need::Nothing,
        (&Method::POST, ["v1", "streams", _, "events"]) => Need::Publish,
        (&Method::POST, ["v1", "sql"]) => Need::Read,
        (&Method::GET | &Method::HEAD, _) => Need::Read,
        (_, ["v1", "tenants", ..]) => Need::Admin,
        (_, ["v1", "views", ..] | ["v1", "anomalies", ..]) => Need::Manage,
        _ => Need::Admin,
    }
}

/// The middleware: authenticates, authorizes, and passes the principal on.
pub async fn authorize(State(keys): State<Arc<Keys>>, mut request: Request, next: Next) -> Response {
    let need = need(request.method(), request.uri().path());
    let principal = if !keys.enabled || need == Need::Nothing {
        Principal::anonymous()
    } else {
        let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        let Some(key) = presented else {
            return unauthorized("this endpoint needs an API key: Authorization: Bearer <key>");
        };
        let Some(p) = keys.by_hash.get(hash(key).trim_start_matches("sha256:")) else {
            return unauthorized("the API key is not valid");
        };
        if !p.role.allows(need) {
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("the key {} ({:?}) may not {} {}", p.name, p.role, request.method(), request.uri().path())).into_response();
        }
        // a tenant-scoped key cannot define views or detectors: they would read every tenant
        if p.tenant.is_some() && matches!(need, Need::Manage | Need::Admin) {
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("the key {} is scoped to a tenant and may not change views or detectors", p.name)).into_response();
        }
        p.clone()
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

/// `weir key`: a new random key, and the configuration entry that admits it.
pub fn new_key(name: &str, role: Role, tenant: Option<&str>) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let key: String = format!("weir_{}", (0..32).map(|_| format!("{:02x}", rng.random::<u8>())).collect::<String>());
    let role = match role {
        Role::Admin => "admin",
        Role::Publisher => "publisher",
        Role::Consumer => "consumer",
        Role::ReadOnly => "read-only",
    };
    let tenant = tenant.map(|t| format!("tenant = {t:?}\n")).unwrap_or_default();
    format!(
        "key: {key}\n(give the key to its user; Weir keeps only its hash)\n\n[[auth.keys]]\nname = {name:?}\nhash = \"{}\"\nrole = \"{role}\"\n{tenant}",
        hash(&key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_what_their_role_gives() {
        assert_eq!(need(&Method::GET, "/livez"), Need::Nothing);
        assert_eq!(need(&Method::POST, "/v1/streams/events/events"), Need::Publish);
        assert_eq!(need(&Method::POST, "/v1/sql"), Need::Read);
        assert_eq!(need(&Method::GET, "/v1/views/x/subscribe"), Need::Read);
        assert_eq!(need(&Method::POST, "/v1/views"), Need::Manage);
        assert_eq!(need(&Method::DELETE, "/v1/anomalies/x"), Need::Manage);
        assert_eq!(need(&Method::PUT, "/v1/tenants/a/quota"), Need::Admin);
        assert!(!Role::Publisher.allows(Need::Read));
        assert!(!Role::ReadOnly.allows(Need::Manage));
        assert!(Role::Consumer.allows(Need::Manage) && !Role::Consumer.allows(Need::Admin));
        // the SHA-256 of "abc"
        assert_eq!(hash("abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
