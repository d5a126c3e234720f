//! The API described as OpenAPI 3.1, from the same annotated handlers that [`crate::router`]
//! routes: both are built from [`routes`], so a route cannot be served without being described.
//! Served at `GET /openapi.json`; checked in at `docs/openapi.json` (a test keeps it current).
//!
//! [`shapes`] describes what handlers build as JSON values and the types that other crates own.

mod shapes;

use std::sync::LazyLock;

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use utoipa::{
    OpenApi,
    openapi::{
        self, ContentBuilder, ResponseBuilder,
        security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
    },
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    ApiError, AppState, agents, artifacts, dashboard, diff, events, github, messages, ops, plans,
    proposals, roster, timeline, tokens, workspaces,
};

pub(crate) use shapes::*;

/// The name of the bearer security scheme.
pub(crate) const BEARER: &str = "bearer";

/// Every route, in groups by the layers [`crate::router`] puts around them.
pub(crate) struct Routes {
    /// No token: health, metrics, this document.
    pub(crate) public: OpenApiRouter<AppState>,
    /// Authenticated by its signature: the GitHub webhook.
    pub(crate) webhook: OpenApiRouter<AppState>,
    /// Bearer token; bodies up to `api.max_body_bytes`.
    pub(crate) authenticated: OpenApiRouter<AppState>,
    /// Bearer token; bodies up to `api.max_event_body_bytes` (a batch of events).
    pub(crate) events: OpenApiRouter<AppState>,
}

/// The routes and their descriptions. One `routes!` per path: every handler named in it is
/// served on the path its `#[utoipa::path]` declares, with the method it declares.
pub(crate) fn routes() -> Routes {
    let public = OpenApiRouter::new()
        .routes(routes!(crate::healthz))
        .routes(routes!(crate::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(dashboard::index))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::style));
    let webhook = OpenApiRouter::new().routes(routes!(github::webhook));
    let events = OpenApiRouter::new().routes(routes!(events::post_events, events::list_events));
    let authenticated = OpenApiRouter::new()
        .routes(routes!(workspaces::create, workspaces::list))
        .routes(routes!(tokens::session))
        .routes(routes!(timeline::read))
        .routes(routes!(timeline::live))
        .routes(routes!(timeline::show))
        .routes(routes!(workspaces::get))
        .routes(routes!(workspaces::put_settings))
        .routes(routes!(crate::list_schemas))
        .routes(routes!(crate::get_schema))
        .routes(routes!(proposals::create, proposals::list))
        .routes(routes!(proposals::show))
        .routes(routes!(diff::diff))
        .routes(routes!(proposals::approve))
        .routes(routes!(proposals::reject))
        .routes(routes!(plans::submit, plans::list))
        .routes(routes!(plans::show))
        .routes(routes!(plans::cancel))
        .routes(routes!(plans::resolve))
        .routes(routes!(messages::send, messages::list))
        .routes(routes!(crate::run_agent))
        .routes(routes!(agents::list))
        .routes(routes!(agents::register, agents::show))
        .routes(routes!(roster::list))
        .routes(routes!(roster::show))
        .routes(routes!(artifacts::list))
        .routes(routes!(artifacts::show))
        .routes(routes!(artifacts::content))
        .routes(routes!(artifacts::start, artifacts::retrospectives))
        .routes(routes!(artifacts::metrics))
        .routes(routes!(github::catch_up_route))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::revoke))
        .routes(routes!(ops::status))
        .routes(routes!(ops::dead_letters))
        .routes(routes!(ops::retry))
        .routes(routes!(ops::pause_relay))
        .routes(routes!(ops::resume_relay))
        .routes(routes!(ops::get_mode, ops::put_mode));
    Routes {
        public,
        webhook,
        authenticated,
        events,
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard",
        description = "The HTTP API of Switchyard, an event-sourced control plane. Every `/v1` \
            route but the GitHub webhook needs `Authorization: Bearer <token>`. A request is \
            answered 2xx only after its events are committed; every error has the shape of \
            `ApiError` and appends nothing. The guide is docs/api.md.",
    ),
    tags(
        (name = "workspaces", description = "Workspaces, created and configured through events."),
        (name = "events", description = "The CloudEvents HTTP binding, the event log, and the schema catalog."),
        (name = "timeline", description = "A workspace's events newest first, one event's causation chain, and the live tail (server-sent events)."),
        (name = "proposals", description = "Changes to a workspace's repository that a person approves or rejects."),
        (name = "plans", description = "Task graphs run by the orchestrator."),
        (name = "messages", description = "Messages to and between agents."),
        (name = "agents", description = "Agents: the registry, external agents (registration, consumers), a workspace's agents and their memory, and asking an agent to run."),
        (name = "artifacts", description = "The artifact registry: versions, readers, staleness, content."),
        (name = "retrospectives", description = "Retrospectives, their action items, and metrics over time."),
        (name = "tokens", description = "API tokens (admin)."),
        (name = "ops", description = "The operators' API and Prometheus metrics."),
        (name = "github", description = "GitHub webhook deliveries and their catch-up."),
        (name = "health", description = "Liveness, readiness, and this document."),
        (name = "dashboard", description = "The web dashboard's three files (no data, no token)."),
    ),
    components(schemas(ApiError))
)]
struct ApiDoc;

/// The whole API as OpenAPI 3.1.
pub fn openapi() -> openapi::OpenApi {
    document(routes())
}

fn document(routes: Routes) -> openapi::OpenApi {
    let Routes {
        public,
        webhook,
        authenticated,
        events,
    } = routes;
    let mut secured = authenticated.merge(events).into_openapi();
    for item in secured.paths.paths.values_mut() {
        for operation in operations(item) {
            // What `auth::require_token` guards needs a bearer token, and can answer 401 and 429.
            operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            let responses = &mut operation.responses.responses;
            responses.entry("401".into()).or_insert_with(|| {
                error_response(
                    "No token, or an unknown, revoked or expired one (`WWW-Authenticate: Bearer`)",
                )
            });
            responses.entry("429".into()).or_insert_with(|| {
                error_response("Too many failed authentications from this address (`Retry-After`)")
            });
        }
    }
    let mut webhook = webhook.into_openapi();
    for doc in [&mut secured, &mut webhook] {
        for item in doc.paths.paths.values_mut() {
            for operation in operations(item) {
                // PostgreSQL can fail underneath; the cause is logged, never answered.
                operation
                    .responses
                    .responses
                    .entry("500".into())
                    .or_insert_with(|| {
                        error_response("Internal error; the server log has the cause")
                    });
            }
        }
    }
    let mut doc = ApiDoc::openapi();
    doc.merge(public.into_openapi());
    doc.merge(webhook);
    doc.merge(secured);
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.components
        .get_or_insert_with(openapi::Components::default)
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`sy_…`), from `POST /v1/tokens`, `switchyard tokens create` \
                         or `SWITCHYARD_ADMIN_TOKEN`",
                    ))
                    .build(),
            ),
        );
    doc
}

/// Every operation of a path item.
fn operations(item: &mut openapi::PathItem) -> impl Iterator<Item = &mut openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn error_response(description: &str) -> openapi::RefOr<openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(openapi::Ref::from_schema_name("ApiError")))
                .build(),
        )
        .build()
        .into()
}

static DOCUMENT: LazyLock<openapi::OpenApi> = LazyLock::new(openapi);

/// The OpenAPI document of this API
///
/// No token needed. The same document is checked in at `docs/openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    operation_id = "openapi",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object, content_type = "application/json"))
)]
pub(crate) async fn openapi_json() -> Response {
    Json(&*DOCUMENT).into_response()
}
