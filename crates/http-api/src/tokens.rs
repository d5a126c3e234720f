//! API tokens: created (shown once, stored as SHA-256), listed, revoked — through the admin
//! API and the CLI.
//!
//! A token belongs to one workspace or to all, and has one scope; an admin token of one
//! workspace manages that workspace's tokens only, and another workspace's token answers
//! exactly like a missing one.

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use switchyard_events::Workspace;

use crate::{ApiError, AppState, Principal, Scope, error::parse_json, token_hash};

/// A token as listed: everything but the secret.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Its id.
    pub id: uuid::Uuid,
    /// Its name, recorded as the author or approver of what it does.
    pub name: String,
    /// Its workspace; `null` (none) for every workspace.
    pub workspace: Option<String>,
    /// Its scope (`read`, `propose`, `approve`, `admin`).
    #[schema(pattern = "^(read|propose|approve|admin)$")]
    pub scope: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token just made: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    /// The secret, `sy_` and 64 hex digits (256 random bits).
    pub token: String,
    /// The rest.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The name is empty or too long.
    #[error("a token's name is 1 to 200 printable characters")]
    Name,
    /// The workspace does not exist.
    #[error("workspace {0} does not exist")]
    NoWorkspace(String),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

fn secret() -> String {
    // Two v4 UUIDs: 244 bits from the operating system's generator.
    format!(
        "sy_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

const COLUMNS: &str = "id, name, workspace, scope, created_at, expires_at, revoked_at";

/// Makes a token. `workspace` `None`: every workspace.
pub async fn create_token(
    pool: &PgPool,
    name: &str,
    workspace: Option<&Workspace>,
    scope: Scope,
    expires_in: Option<std::time::Duration>,
) -> Result<NewToken, TokenError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(TokenError::Name);
    }
    if let Some(ws) = workspace {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events WHERE workspace = $1 AND stream_id = 'workspace' AND stream_version = 1)",
        )
        .bind(ws.as_str())
        .fetch_one(pool)
        .await?;
        if !exists {
            return Err(TokenError::NoWorkspace(ws.to_string()));
        }
    }
    let token = secret();
    let expires_at = expires_in
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| Utc::now() + d);
    let info: TokenInfo = sqlx::query_as(&format!(
        "INSERT INTO api_tokens (id, token_hash, name, workspace, scope, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    ))
    .bind(uuid::Uuid::now_v7())
    .bind(token_hash(&token))
    .bind(name)
    .bind(workspace.map(Workspace::as_str))
    .bind(scope.as_str())
    .bind(expires_at)
    .fetch_one(pool)
    .await?;
    Ok(NewToken { token, info })
}

/// Tokens, newest first; of one workspace when `workspace` is given (tokens of every
/// workspace are then left out).
pub async fn list_tokens(
    pool: &PgPool,
    workspace: Option<&str>,
) -> Result<Vec<TokenInfo>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_tokens
         WHERE $1::text IS NULL OR workspace = $1 ORDER BY created_at DESC LIMIT 10000"
    ))
    .bind(workspace)
    .fetch_all(pool)
    .await
}

/// Revokes a token (again: no change). `None`: no such token, or not in `workspace`.
pub async fn revoke_token(
    pool: &PgPool,
    id: uuid::Uuid,
    workspace: Option<&str>,
) -> Result<Option<TokenInfo>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
         WHERE id = $1 AND ($2::text IS NULL OR workspace = $2) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(workspace)
    .fetch_optional(pool)
    .await
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci", "workspace": "payments", "scope": "propose", "expires_in": "30d"}))]
pub(crate) struct CreateBody {
    /// Recorded as the author or approver of what it does; 1 to 200 printable characters.
    name: String,
    /// The one workspace it is for; every workspace when absent.
    workspace: Option<String>,
    /// `read`, `propose`, `approve` or `admin`.
    #[schema(pattern = "^(read|propose|approve|admin)$")]
    scope: String,
    /// `30d`, `12h`, `90m`…; never expires when absent.
    expires_in: Option<String>,
}

/// Parses `30d`, `12h`, `1w 2d`… (humantime).
pub fn parse_expiry(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() || d > std::time::Duration::from_secs(10 * 366 * 86_400) {
        return Err(format!("{s:?}: between a second and ten years"));
    }
    Ok(d)
}

/// Creates a token
///
/// The answer is the only time its secret is shown; only its SHA-256 is stored. Admin scope:
/// an admin of one workspace makes tokens of that workspace only.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    operation_id = "create_token",
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Made", body = NewToken),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 403, description = "Not an admin token (of every workspace, for a token of every workspace)", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
        (status = 422, description = "A bad name, scope or expiry (`invalid_token`)", body = ApiError),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: CreateBody = serde_json::from_value(parse_json(&body?)?).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_token",
            e.to_string(),
        )
    })?;
    let scope = Scope::parse(&body.scope).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_token",
            "scope is read, propose, approve or admin",
        )
        .at("/scope")
    })?;
    let workspace = match &body.workspace {
        Some(raw) => Some(
            state
                .existing_workspace(&principal, raw, Scope::Admin)
                .await?,
        ),
        None => {
            principal.require(None, Scope::Admin)?;
            None
        }
    };
    let expires_in = body
        .expires_in
        .as_deref()
        .map(parse_expiry)
        .transpose()
        .map_err(|e| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_token", e).at("/expires_in")
        })?;
    let made = create_token(
        state.store.pool(),
        &body.name,
        workspace.as_ref(),
        scope,
        expires_in,
    )
    .await
    .map_err(|e| match e {
        TokenError::Name => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_token",
            e.to_string(),
        )
        .at("/name"),
        TokenError::NoWorkspace(_) => ApiError::not_found(e.to_string()),
        TokenError::Database(e) => ApiError::internal(&e),
    })?;
    tracing::info!(token.id = %made.info.id, name = %made.info.name, scope = %made.info.scope,
                   workspace = ?made.info.workspace, by = %principal.name, "token created");
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

/// Query of `GET /v1/tokens`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only this workspace's tokens (an admin of one workspace always sees only its own).
    workspace: Option<String>,
}

/// The list of tokens.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenList {
    /// Newest first.
    #[serde(serialize_with = "crate::sorted_keys")]
    tokens: Vec<TokenInfo>,
}

/// Lists tokens
///
/// Newest first, without their secrets. Admin scope: a workspace's admin sees its
/// workspace's tokens.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "tokens",
    operation_id = "list_tokens",
    params(ListQuery),
    responses(
        (status = 200, description = "The tokens", body = TokenList),
        (status = 403, description = "Not an admin token", body = ApiError),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let workspace = match (&principal.workspace, query.workspace) {
        (Some(mine), _) => {
            principal.require(Workspace::parse(mine).ok().as_ref(), Scope::Admin)?;
            Some(mine.clone())
        }
        (None, asked) => {
            principal.require(None, Scope::Admin)?;
            asked
        }
    };
    let tokens = list_tokens(state.store.pool(), workspace.as_deref())
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(TokenList { tokens }).into_response())
}

/// Revokes a token
///
/// At once; revoking again changes nothing. Admin scope (of the token's workspace).
#[utoipa::path(
    post,
    path = "/v1/tokens/{id}/revoke",
    tag = "tokens",
    operation_id = "revoke_token",
    params(("id" = uuid::Uuid, Path, description = "The token's id")),
    responses(
        (status = 200, description = "Revoked", body = TokenInfo),
        (status = 403, description = "Not an admin token", body = ApiError),
        (status = 404, description = "No such token (or one of another workspace)", body = ApiError),
    )
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found(format!("token {id} does not exist"));
    let token_id = uuid::Uuid::parse_str(&id).map_err(|_| missing())?;
    match &principal.workspace {
        Some(mine) => principal.require(Workspace::parse(mine).ok().as_ref(), Scope::Admin)?,
        None => principal.require(None, Scope::Admin)?,
    }
    state.token_cache.clear();
    let revoked = revoke_token(state.store.pool(), token_id, principal.workspace.as_deref())
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(missing)?;
    tracing::info!(token.id = %revoked.id, by = %principal.name, "token revoked");
    Ok(Json(revoked).into_response())
}

/// Who the caller is, and what the server offers a client such as the dashboard.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SessionView {
    /// The token's name.
    name: String,
    /// The token's id (never the token).
    token_id: uuid::Uuid,
    /// Its scope (`read`, `propose`, `approve`, `admin`).
    #[schema(pattern = "^(read|propose|approve|admin)$")]
    scope: &'static str,
    /// Its one workspace; `null` for every workspace.
    workspace: Option<String>,
    /// What the token may do, spelled out for a client that shows or hides actions (the
    /// server checks each request anyway).
    can: Abilities,
    /// `api.trace_url`: a trace viewer's address, `{trace_id}` standing for the id.
    trace_url: Option<String>,
}

/// What a scope allows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Abilities {
    /// Read everything of its workspaces.
    read: bool,
    /// Propose changes, submit plans, send messages.
    propose: bool,
    /// Approve and reject proposals, resolve escalations, start retrospectives.
    approve: bool,
    /// Tokens, settings, and (for every workspace) the ops routes.
    admin: bool,
    /// The ops routes: an admin token for every workspace.
    ops: bool,
}

/// The caller's token
///
/// Its name, scope and workspace, what it may do, and the server's links for clients. Any
/// live token.
#[utoipa::path(
    get,
    path = "/v1/session",
    tag = "tokens",
    operation_id = "session",
    responses((status = 200, description = "The caller's token", body = SessionView))
)]
pub(crate) async fn session(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Response {
    let scope = principal.scope;
    Json(SessionView {
        can: Abilities {
            read: scope >= Scope::Read,
            propose: scope >= Scope::Propose,
            approve: scope >= Scope::Approve,
            admin: scope >= Scope::Admin,
            ops: scope >= Scope::Admin && principal.workspace.is_none(),
        },
        name: principal.name,
        token_id: principal.token_id,
        scope: scope.as_str(),
        workspace: principal.workspace,
        trace_url: state.config.trace_url.clone(),
    })
    .into_response()
}
