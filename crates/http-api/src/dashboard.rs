//! The dashboard: three static files embedded in the binary and served at `/` and `/ui/…`.
//! They hold no data: the page asks the `/v1` API for everything with the token the user
//! signs in with (kept in the tab's `sessionStorage`, sent as a bearer header, never put in
//! a URL), so the API's scope checks are the dashboard's too. See docs/dashboard.md.

use std::sync::LazyLock;

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest as _, Sha256};

/// One embedded file and its validator.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: String,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        let digest = Sha256::digest(body.as_bytes());
        Self {
            body,
            content_type,
            etag: format!("\"{}\"", hex::encode(&digest[..12])),
        }
    }

    fn serve(&self, request: &HeaderMap) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        // Revalidated on every load, so a new binary's files are picked up at once.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Ok(etag) = HeaderValue::from_str(&self.etag) {
            headers.insert(header::ETAG, etag);
        }
        // Scripts only from these files, no inline code, no framing, nothing sent elsewhere.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            ),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        let fresh = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == self.etag));
        if fresh {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        (headers, self.body).into_response()
    }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../dashboard/index.html"),
        "text/html; charset=utf-8",
    )
});
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../dashboard/app.js"),
        "text/javascript; charset=utf-8",
    )
});
static STYLE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../dashboard/app.css"),
        "text/css; charset=utf-8",
    )
});

/// The dashboard
///
/// Its page; it asks the API for everything with the token the user signs in with. No token
/// needed (it holds no data).
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    operation_id = "dashboard",
    responses((status = 200, description = "The dashboard's page", body = String, content_type = "text/html"))
)]
pub(crate) async fn index(headers: HeaderMap) -> Response {
    INDEX.serve(&headers)
}

/// The dashboard's script
///
/// No token needed.
#[utoipa::path(
    get,
    path = "/ui/app.js",
    tag = "dashboard",
    operation_id = "dashboard_script",
    responses((status = 200, description = "The script", body = String, content_type = "text/javascript"))
)]
pub(crate) async fn script(headers: HeaderMap) -> Response {
    SCRIPT.serve(&headers)
}

/// The dashboard's style sheet
///
/// No token needed.
#[utoipa::path(
    get,
    path = "/ui/app.css",
    tag = "dashboard",
    operation_id = "dashboard_style",
    responses((status = 200, description = "The style sheet", body = String, content_type = "text/css"))
)]
pub(crate) async fn style(headers: HeaderMap) -> Response {
    STYLE.serve(&headers)
}
