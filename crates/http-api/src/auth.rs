//! Bearer tokens. Only a token's SHA-256 is stored; a request's token is hashed and looked up.

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::Response,
};
use std::collections::HashMap;

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use switchyard_events::Workspace;

use crate::{ApiError, AppState};

/// What a token may do. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read anything of its workspace.
    Read,
    /// Also post events and proposals.
    Propose,
    /// Also decide proposals.
    Approve,
    /// Everything, including workspaces and tokens.
    Admin,
}

impl Scope {
    /// Its name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Propose => "propose",
            Self::Approve => "approve",
            Self::Admin => "admin",
        }
    }

    /// Parses `read`, `propose`, `approve` or `admin`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Self::Read,
            "propose" => Self::Propose,
            "approve" => Self::Approve,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
}

/// The caller, as established by its token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's id (never the token).
    pub token_id: uuid::Uuid,
    /// The token's name, for audit.
    pub name: String,
    /// The one workspace the token is for, or `None` for every workspace.
    pub workspace: Option<String>,
    /// What the token may do.
    pub scope: Scope,
}

impl Principal {
    /// Refuses unless the token may act with `scope` in `workspace`. A token of another
    /// workspace is told the workspace does not exist, exactly as if it did not.
    pub fn require(&self, workspace: Option<&Workspace>, scope: Scope) -> Result<(), ApiError> {
        if let (Some(mine), Some(ws)) = (&self.workspace, workspace)
            && mine != ws.as_str()
        {
            return Err(ApiError::not_found(format!(
                "workspace {ws} does not exist"
            )));
        }
        if self.workspace.is_some() && workspace.is_none() && scope == Scope::Admin {
            return Err(ApiError::forbidden("this needs a token for all workspaces"));
        }
        if self.scope < scope {
            return Err(ApiError::forbidden(format!(
                "this token's scope is {:?}; this needs {:?}",
                self.scope, scope
            )));
        }
        Ok(())
    }
}

/// SHA-256 of a token, as stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The name under which the `SWITCHYARD_ADMIN_TOKEN` token is stored.
const BOOTSTRAP_NAME: &str = "bootstrap admin (SWITCHYARD_ADMIN_TOKEN)";

/// Shortest token accepted from the environment.
pub const MIN_TOKEN_LEN: usize = 16;

/// Makes `token` a valid admin token for every workspace, and revokes an earlier bootstrap
/// token that differs, so that changing `SWITCHYARD_ADMIN_TOKEN` rotates it.
pub async fn bootstrap_admin_token(pool: &PgPool, token: &str) -> Result<(), BootstrapError> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(BootstrapError::TooShort);
    }
    let hash = token_hash(token);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE api_tokens SET revoked_at = now()
         WHERE name = $1 AND token_hash <> $2 AND revoked_at IS NULL",
    )
    .bind(BOOTSTRAP_NAME)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO api_tokens (id, token_hash, name, workspace, scope)
         VALUES ($1, $2, $3, NULL, 'admin')
         ON CONFLICT (token_hash) DO UPDATE SET revoked_at = NULL, expires_at = NULL",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(&hash)
    .bind(BOOTSTRAP_NAME)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Why the admin token could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The token is too easy to guess.
    #[error("SWITCHYARD_ADMIN_TOKEN must be at least {MIN_TOKEN_LEN} characters")]
    TooShort,
    /// PostgreSQL failed.
    #[error("could not store the admin token: {0}")]
    Database(#[from] sqlx::Error),
}

/// Middleware: every `/v1` request needs `Authorization: Bearer <token>` of a live token.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // Owned before any await: the request's body is not `Sync`.
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let peer = crate::serve::peer(&request);
    match authenticate(&state, header.as_deref()).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            Ok(next.run(request).await)
        }
        Err(error) if error.status() == axum::http::StatusCode::UNAUTHORIZED => {
            // Failed attempts are rate limited per client address; good tokens never are.
            match peer {
                Some(peer) => Err(state.auth_failures.failed(peer.ip()).unwrap_or(error)),
                None => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

/// Failed authentications per client address: after `burst` failures, one more per
/// `60 / per_minute` seconds; beyond that 429 with `Retry-After`.
pub(crate) struct AuthFailures {
    limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    seen: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for AuthFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthFailures")
    }
}

impl AuthFailures {
    pub(crate) fn new(per_minute: u32, burst: u32) -> Self {
        let per_minute =
            std::num::NonZeroU32::new(per_minute.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        Self {
            limiter: governor::RateLimiter::keyed(
                governor::Quota::per_minute(per_minute).allow_burst(burst),
            ),
            seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts a failure of `ip`: `Some(429)` once it is over its budget.
    fn failed(&self, ip: std::net::IpAddr) -> Option<ApiError> {
        // Forget quiet addresses now and then, so memory stays bounded.
        if self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4_096 == 4_095 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        match self.limiter.check_key(&ip) {
            Ok(()) => None,
            Err(not_until) => {
                use governor::clock::Clock as _;
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                tracing::warn!(%ip, "too many failed authentications");
                Some(ApiError::too_many(
                    format!("too many failed authentications from {ip}; try again in {seconds} s"),
                    seconds,
                ))
            }
        }
    }
}

/// Valid tokens seen lately, by hash, so that a busy client is not one more database query per
/// request. An entry lives `api.token_cache_ms`; a revocation through this instance clears the
/// cache at once, one through another instance is seen here within that time. Failed lookups
/// are never cached.
pub(crate) struct TokenCache {
    ttl: std::time::Duration,
    entries: std::sync::RwLock<HashMap<Vec<u8>, Cached>>,
}

struct Cached {
    principal: Principal,
    fetched: std::time::Instant,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Most tokens cached at once; beyond it the cache starts over.
const TOKEN_CACHE_ENTRIES: usize = 10_000;

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl TokenCache {
    pub(crate) fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            entries: std::sync::RwLock::default(),
        }
    }

    fn get(&self, hash: &[u8]) -> Option<Principal> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.read().ok()?;
        let cached = entries.get(hash)?;
        let live = cached.fetched.elapsed() < self.ttl
            && cached.expires_at.is_none_or(|at| at > chrono::Utc::now());
        live.then(|| cached.principal.clone())
    }

    fn put(&self, hash: Vec<u8>, cached: Cached) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= TOKEN_CACHE_ENTRIES {
                entries.clear();
            }
            entries.insert(hash, cached);
        }
    }

    /// Forgets every token (after a revocation).
    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.entries.write() {
            entries.clear();
        }
    }
}

async fn authenticate(state: &AppState, header: Option<&str>) -> Result<Principal, ApiError> {
    let token = header
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
    let hash = token_hash(token);
    if let Some(principal) = state.token_cache.get(&hash) {
        return Ok(principal);
    }
    type Row = (
        uuid::Uuid,
        String,
        Option<String>,
        String,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, name, workspace, scope, expires_at FROM api_tokens
         WHERE token_hash = $1 AND revoked_at IS NULL
           AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(&hash)
    .fetch_optional(state.store.pool())
    .await
    .map_err(|e| ApiError::internal(&e))?;
    let (token_id, name, workspace, scope, expires_at) =
        row.ok_or_else(|| ApiError::unauthorized("the token is unknown, revoked or expired"))?;
    let scope = Scope::parse(&scope)
        .ok_or_else(|| ApiError::unauthorized("the token's scope is unknown"))?;
    let principal = Principal {
        token_id,
        name,
        workspace,
        scope,
    };
    state.token_cache.put(
        hash,
        Cached {
            principal: principal.clone(),
            fetched: std::time::Instant::now(),
            expires_at,
        },
    );
    Ok(principal)
}
