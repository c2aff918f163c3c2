//! The web client (`clients/web`), served at `/`.
//!
//! The `paracord` binary embeds the files of `clients/web/dist` at compile time (its build
//! script makes a table of [`WebAsset`]s) and hands them to [`crate::router::app_with_web`].
//! Everything the route table does not match ends up here: paths under the API prefixes keep
//! answering `M_UNRECOGNIZED`; any other `GET`/`HEAD` is a file of the app, or `index.html`
//! for the app's own client-side routes (`/channels/…`, `/invite/{code}`, `/login`, …).
//! Without an embedded client (a binary built before `npm run build`), `/` says so.

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use paracord_core::Error;

use crate::ApiError;

/// One file of the built web client.
#[derive(Debug)]
pub struct WebAsset {
    /// Relative to the root, without a leading `/`: `index.html`, `assets/index-3fa9c1.js`.
    pub path: &'static str,
    pub mime: &'static str,
    pub body: &'static [u8],
    /// The same bytes gzip-compressed, when the build made a `.gz` beside the file.
    pub gzip: Option<&'static [u8]>,
}

/// Paths that belong to the APIs: never the app's, whatever the app's routes are.
const API_PREFIXES: &[&str] = &["/_matrix", "/_paracord", "/_synapse", "/.well-known"];

/// What the app loads, and nothing else: its own scripts (and the crypto WASM, compiled with
/// `WebAssembly`), its stylesheet, images it draws (blob: and data: for avatars and
/// uploads), and requests to this server only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' \
     'wasm-unsafe-eval'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; \
     font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The fallback of the route table: the web client, or `M_UNRECOGNIZED` for API paths.
pub(crate) async fn serve(assets: &'static [WebAsset], req: Request) -> Response {
    let path = req.uri().path();
    let is_api = API_PREFIXES
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')));
    if is_api || !matches!(*req.method(), Method::GET | Method::HEAD) {
        return ApiError(Error::unrecognized("unrecognized request")).into_response();
    }
    if assets.is_empty() {
        return not_built();
    }
    let wanted = path.trim_start_matches('/');
    if let Some(asset) = assets
        .iter()
        .find(|a| !wanted.is_empty() && a.path == wanted)
    {
        let immutable = asset.path.starts_with("assets/");
        return file(asset, immutable, req.headers());
    }
    // A hashed asset that does not exist (an old tab after an upgrade) is a 404, not the
    // app's HTML under a script's name.
    if wanted.starts_with("assets/") {
        return with_security_headers(
            (StatusCode::NOT_FOUND, "no such file").into_response(),
            "no-cache",
        );
    }
    match assets.iter().find(|a| a.path == "index.html") {
        Some(index) => file(index, false, req.headers()),
        None => not_built(),
    }
}

fn file(asset: &'static WebAsset, immutable: bool, headers: &HeaderMap) -> Response {
    let gzip = asset.gzip.filter(|_| accepts_gzip(headers));
    let body = gzip.unwrap_or(asset.body);
    let mut response = Response::new(Body::from(body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    if gzip.is_some() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if asset.gzip.is_some() {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    let cache = if immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    with_security_headers(response, cache)
}

fn with_security_headers(mut response: Response, cache: &'static str) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Whether `Accept-Encoding` lists `gzip` (or `*`) with a non-zero quality.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let zero_quality = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !zero_quality
        })
}

/// What `/` says when the binary was built before the web client was.
fn not_built() -> Response {
    const PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
        <title>Paracord</title></head><body>\n\
        <h1>Paracord is running, without its web client</h1>\n\
        <p>This <code>paracord</code> binary was built without the web client: \
        <code>clients/web/dist</code> did not exist when it was compiled.</p>\n\
        <p>To build it in: <code>cd clients/web &amp;&amp; npm ci &amp;&amp; npm run build</code>, \
        then rebuild the server (<code>cargo build -p paracord</code>), \
        or simply use <code>./scripts/run</code>, which does both.</p>\n\
        <p>Any Matrix client can use this server meanwhile.</p>\n\
        </body></html>\n";
    let response = (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        PAGE,
    )
        .into_response();
    with_security_headers(response, "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        h
    }

    #[test]
    fn gzip_is_accepted_only_when_listed_with_a_quality() {
        assert!(accepts_gzip(&headers("gzip, deflate, br")));
        assert!(accepts_gzip(&headers("br;q=1.0, gzip;q=0.8")));
        assert!(accepts_gzip(&headers("*")));
        assert!(!accepts_gzip(&headers("gzip;q=0")));
        assert!(!accepts_gzip(&headers("br, deflate")));
        assert!(!accepts_gzip(&headers("x-gzip-ish")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
