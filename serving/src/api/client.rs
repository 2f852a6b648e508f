//! The web client: the committed build in `web/dist`, compiled into the binary and served
//! at `/`. A path that names a file gets it; any other path outside the API and the
//! socket.io endpoint is one of the client's own pages and gets `index.html` (the client
//! routes it); the API's unknown routes stay JSON 404s.

use axum::http::{HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use include_dir::{Dir, include_dir};

use crate::ServingError;

static CLIENT: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../web/dist");

/// What a page of the client may load: its own scripts and styles (MUI writes its styles
/// inline), its own API and socket; nothing framed, nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The fallback of the router: the client's files and pages, or the API's 404.
pub(crate) async fn client(method: Method, uri: Uri) -> Result<Response, ServingError> {
    let path = uri.path();
    let outside_client = path == "/api"
        || path.starts_with("/api/")
        || path.starts_with("/socket.io")
        || !(method == Method::GET || method == Method::HEAD);
    if outside_client {
        return Err(ServingError::NotFound { what: "route" });
    }
    let name = path.trim_start_matches('/');
    if let Some(file) = CLIENT.get_file(name).filter(|_| !name.is_empty()) {
        // Vite names every asset by its content: a name never changes what it holds.
        let cache = if name.starts_with("assets/") {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        return Ok(file_response(file.contents(), content_type(name), cache));
    }
    let is_page = !name.rsplit('/').next().unwrap_or_default().contains('.');
    match CLIENT.get_file("index.html") {
        Some(index) if is_page => {
            let mut response =
                file_response(index.contents(), "text/html; charset=utf-8", "no-cache");
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            );
            Ok(response)
        }
        _ => Err(ServingError::NotFound { what: "file" }),
    }
}

fn file_response(body: &'static [u8], content_type: &'static str, cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
