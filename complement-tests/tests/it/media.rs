//! The media repository: uploads (plain and async), authenticated and legacy downloads,
//! thumbnails, safe headers, size limits and URL previews.

use paracord_complement::{expect_error, expect_ok, StatusCode, TestServer, User};
use serde_json::Value;

/// A 64×32 red PNG.
const PNG: &[u8] = &[
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 64, 0, 0, 0, 32, 8, 2,
    0, 0, 0, 45, 255, 233, 211, 0, 0, 0, 52, 73, 68, 65, 84, 120, 218, 237, 207, 65, 9, 0, 0, 8, 0,
    177, 235, 95, 90, 51, 248, 20, 6, 43, 176, 166, 94, 75, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 224, 106, 1, 50, 195, 248, 106, 79, 231, 227,
    87, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
];

struct Got {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

async fn call(
    server: &TestServer,
    user: Option<&User>,
    method: reqwest::Method,
    path: &str,
    body: Option<(&[u8], &str)>,
) -> Got {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", server.base_url()));
    if let Some(u) = user {
        req = req.bearer_auth(&u.access_token);
    }
    if let Some((b, ct)) = body {
        req = req.header("content-type", ct).body(b.to_vec());
    }
    let resp = req.send().await.expect("HTTP answer");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body").to_vec();
    Got {
        status,
        headers,
        bytes,
    }
}

fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.starts_with(&[137, 80, 78, 71]),
        "not a PNG: {:?}",
        &png[..png.len().min(8)]
    );
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    (w, h)
}

fn mxc_parts(uri: &str) -> (String, String) {
    let rest = uri.strip_prefix("mxc://").expect("mxc uri");
    let (server, id) = rest.split_once('/').expect("server/id");
    (server.to_owned(), id.to_owned())
}

#[tokio::test]
async fn images_upload_download_and_thumbnail() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let up = call(
        &server,
        Some(&alice),
        reqwest::Method::POST,
        "/_matrix/media/v3/upload?filename=red.png",
        Some((PNG, "image/png")),
    )
    .await;
    assert_eq!(
        up.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&up.bytes)
    );
    let (srv, id) = mxc_parts(up.json()["content_uri"].as_str().unwrap());

    let dl = call(
        &server,
        Some(&alice),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/download/{srv}/{id}"),
        None,
    )
    .await;
    assert_eq!(dl.status, StatusCode::OK);
    assert_eq!(dl.bytes, PNG, "same bytes back");
    assert_eq!(dl.header("content-type"), "image/png");
    assert!(
        dl.header("content-disposition").starts_with("inline"),
        "{}",
        dl.header("content-disposition")
    );
    assert!(
        dl.header("content-disposition").contains("red.png"),
        "{}",
        dl.header("content-disposition")
    );

    let anon = call(
        &server,
        None,
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/download/{srv}/{id}"),
        None,
    )
    .await;
    assert_eq!(
        anon.status,
        StatusCode::UNAUTHORIZED,
        "authenticated media needs a token"
    );
    let legacy = call(
        &server,
        None,
        reqwest::Method::GET,
        &format!("/_matrix/media/v3/download/{srv}/{id}"),
        None,
    )
    .await;
    assert_eq!(legacy.bytes, PNG, "legacy download");

    let crop = call(
        &server,
        Some(&alice),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/thumbnail/{srv}/{id}?width=16&height=16&method=crop"),
        None,
    )
    .await;
    assert_eq!(
        crop.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&crop.bytes)
    );
    // Issue 15: sizes snap to the fixed set; 16×16 is served at 32×32 (of a 64×32 image).
    assert_eq!(png_size(&crop.bytes), (32, 32), "crop fills the box");
    let scale = call(
        &server,
        Some(&alice),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/thumbnail/{srv}/{id}?width=16&height=16&method=scale"),
        None,
    )
    .await;
    assert_eq!(
        png_size(&scale.bytes),
        (32, 16),
        "scale keeps the aspect ratio"
    );
    let again = call(
        &server,
        Some(&alice),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/thumbnail/{srv}/{id}?width=16&height=16&method=scale"),
        None,
    )
    .await;
    assert_eq!(again.bytes, scale.bytes, "cached thumbnail is the same");
    let bad = call(
        &server,
        Some(&alice),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/thumbnail/{srv}/{id}?width=x&height=16"),
        None,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let missing = call(
        &server,
        Some(&alice),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/download/{srv}/nope"),
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["errcode"], "M_NOT_FOUND");
    let config = call(
        &server,
        Some(&alice),
        reqwest::Method::GET,
        "/_matrix/client/v1/media/config",
        None,
    )
    .await;
    assert!(
        config.json()["m.upload.size"].as_u64().unwrap_or(0) > 0,
        "{}",
        config.json()
    );
}

#[tokio::test]
async fn html_and_svg_are_served_as_attachments() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    for (ct, body) in [
        ("text/html", &b"<script>alert(1)</script>"[..]),
        (
            "image/svg+xml",
            &b"<svg xmlns='http://www.w3.org/2000/svg'/>"[..],
        ),
    ] {
        let up = call(
            &server,
            Some(&alice),
            reqwest::Method::POST,
            "/_matrix/media/v3/upload",
            Some((body, ct)),
        )
        .await;
        let (srv, id) = mxc_parts(up.json()["content_uri"].as_str().unwrap());
        let dl = call(
            &server,
            Some(&alice),
            reqwest::Method::GET,
            &format!("/_matrix/client/v1/media/download/{srv}/{id}"),
            None,
        )
        .await;
        assert!(
            dl.header("content-disposition").starts_with("attachment"),
            "{ct}: {}",
            dl.header("content-disposition")
        );
        assert!(
            dl.header("content-security-policy").contains("sandbox"),
            "{ct}"
        );
        assert_eq!(dl.header("x-content-type-options"), "nosniff");
        let thumb = call(
            &server,
            Some(&alice),
            reqwest::Method::GET,
            &format!("/_matrix/client/v1/media/thumbnail/{srv}/{id}?width=8&height=8"),
            None,
        )
        .await;
        assert!(
            thumb.status.is_client_error(),
            "{ct} is not thumbnailed: {}",
            thumb.status
        );
    }
}

#[tokio::test]
async fn async_uploads_fill_a_reserved_id_once() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let created = call(
        &server,
        Some(&alice),
        reqwest::Method::POST,
        "/_matrix/media/v1/create",
        None,
    )
    .await;
    assert_eq!(created.status, StatusCode::OK);
    assert!(
        created.json()["unused_expires_at"].as_u64().is_some(),
        "{}",
        created.json()
    );
    let (srv, id) = mxc_parts(created.json()["content_uri"].as_str().unwrap());
    let early = call(
        &server,
        Some(&alice),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/download/{srv}/{id}"),
        None,
    )
    .await;
    assert_eq!(
        early.json()["errcode"],
        "M_NOT_YET_UPLOADED",
        "{}",
        early.json()
    );
    let by_bob = call(
        &server,
        Some(&bob),
        reqwest::Method::PUT,
        &format!("/_matrix/media/v3/upload/{srv}/{id}"),
        Some((b"hi", "text/plain")),
    )
    .await;
    assert_eq!(
        by_bob.status,
        StatusCode::FORBIDDEN,
        "only the reserver uploads"
    );
    let put = call(
        &server,
        Some(&alice),
        reqwest::Method::PUT,
        &format!("/_matrix/media/v3/upload/{srv}/{id}"),
        Some((b"hello", "text/plain")),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.json());
    let again = call(
        &server,
        Some(&alice),
        reqwest::Method::PUT,
        &format!("/_matrix/media/v3/upload/{srv}/{id}"),
        Some((b"other", "text/plain")),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.json()["errcode"], "M_CANNOT_OVERWRITE_MEDIA");
    let dl = call(
        &server,
        Some(&bob),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/download/{srv}/{id}"),
        None,
    )
    .await;
    assert_eq!(dl.bytes, b"hello");
}

#[tokio::test]
async fn uploads_over_the_limit_are_too_large() {
    let server =
        TestServer::start_with(|env| env.push(("PARACORD_MAX_UPLOAD_BYTES".into(), "1000".into())))
            .await;
    let alice = server.register_random().await;
    let big = vec![b'x'; 2000];
    let up = call(
        &server,
        Some(&alice),
        reqwest::Method::POST,
        "/_matrix/media/v3/upload",
        Some((&big, "text/plain")),
    )
    .await;
    assert_eq!(up.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(up.json()["errcode"], "M_TOO_LARGE");
    let small = call(
        &server,
        Some(&alice),
        reqwest::Method::POST,
        "/_matrix/media/v3/upload",
        Some((&big[..500], "text/plain")),
    )
    .await;
    assert_eq!(small.status, StatusCode::OK);
}

/// A page served by a separate local HTTP server process (python3 -m http.server).
struct Site {
    process: paracord_complement::ChildProcess,
    _dir: tempfile::TempDir,
}

async fn serve_page(html: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("page.html"), html).unwrap();
    let root = dir.path().to_owned();
    let process = paracord_complement::ChildProcess::start(move |port| {
        let mut c = std::process::Command::new("python3");
        c.args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        c
    })
    .await;
    Site { process, _dir: dir }
}

#[tokio::test]
async fn url_previews_refuse_loopback_unless_allowed() {
    let site = serve_page(r#"<html><head><title>Fallback</title><meta property="og:title" content="Paracord page"><meta property="og:description" content="A test page"><meta property="og:image" content="dot.png"></head></html>"#).await;
    std::fs::write(site._dir.path().join("dot.png"), PNG).unwrap();
    let url = format!("http://127.0.0.1:{}/page.html", site.process.port);
    let q = format!(
        "/_matrix/client/v1/media/preview_url?url={}",
        paracord_complement::enc(&url)
    );

    let strict = TestServer::start_guarded(|_| {}).await;
    let alice = strict.register_random().await;
    let refused = alice.get(&q).await;
    expect_error(
        &refused,
        StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        "preview of a loopback URL",
    );

    // The deprecated url_preview_allow_private still opens previews (only).
    let open = TestServer::start_guarded(|env| {
        env.push(("PARACORD_URL_PREVIEW_ALLOW_PRIVATE".into(), "true".into()))
    })
    .await;
    let bob = open.register_random().await;
    let preview = expect_ok(bob.get(&q).await, "preview with private addresses allowed");
    assert_eq!(preview["og:title"], "Paracord page", "{preview}");
    assert_eq!(preview["og:description"], "A test page", "{preview}");
    // Issue 14: the image (a relative URL) is fetched and kept here, with its size and
    // dimensions.
    assert!(
        preview["og:image"]
            .as_str()
            .is_some_and(|i| i.starts_with("mxc://")),
        "{preview}"
    );
    assert_eq!(preview["matrix:image:size"], PNG.len(), "{preview}");
    assert_eq!(preview["og:image:width"], 64, "{preview}");
    assert_eq!(preview["og:image:height"], 32, "{preview}");
    // Issue 14: the legacy path answers the same.
    let legacy = format!(
        "{}/_matrix/media/v3/preview_url?url={}",
        open.base_url(),
        paracord_complement::enc(&url)
    );
    let resp = reqwest::Client::new()
        .get(legacy)
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .expect("legacy preview_url");
    assert_eq!(resp.status(), 200, "the legacy preview_url path");
    let legacy: Value = resp.json().await.expect("JSON");
    assert_eq!(legacy["og:title"], "Paracord page", "{legacy}");
    // An allow list admits one range; a deny list beats everything.
    let listed = TestServer::start_guarded(|env| {
        env.push((
            "PARACORD_URL_PREVIEW_IP_ALLOWLIST".into(),
            r#"["127.0.0.0/8"]"#.into(),
        ))
    })
    .await;
    let carol = listed.register_random().await;
    let preview = expect_ok(carol.get(&q).await, "preview of an allow-listed range");
    assert_eq!(preview["og:title"], "Paracord page", "{preview}");
    let denied = TestServer::start_with(|env| {
        env.push(("PARACORD_URL_PREVIEW_ALLOW_PRIVATE".into(), "true".into()));
        env.push((
            "PARACORD_URL_PREVIEW_IP_DENYLIST".into(),
            r#"["127.0.0.1/32"]"#.into(),
        ));
    })
    .await;
    let dave = denied.register_random().await;
    let refused = dave.get(&q).await;
    expect_error(
        &refused,
        StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        "preview of a deny-listed address",
    );
    let bad = bob
        .get("/_matrix/client/v1/media/preview_url?url=ftp%3A%2F%2Fexample.org")
        .await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST, "{bad:?}");
}

/// Issue 15: without `ip_range_allowlist`, a preview reaches nothing on loopback, whichever way
/// the URL names it, and the client learns only that the page could not be reached (the same
/// answer as for a host that is down), not why.
#[tokio::test]
async fn url_previews_of_loopback_are_refused_without_the_allowlist() {
    use paracord_complement::network::{StubAnswer, StubHttp};
    let page = StubHttp::start(
        [127, 0, 0, 1],
        StubAnswer::ok("text/html", "<title>inside</title>"),
    )
    .await;
    let server = TestServer::start_guarded(|_| {}).await;
    let alice = server.register_random().await;
    let port = page.port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://127.1:{port}/"),
    ] {
        let resp = alice
            .get(&format!(
                "/_matrix/client/v1/media/preview_url?url={}",
                paracord_complement::enc(&url)
            ))
            .await;
        expect_error(&resp, StatusCode::BAD_GATEWAY, "M_UNKNOWN", &url);
        assert_eq!(
            resp.1["error"], "could not reach the remote server",
            "a generic message for {url}"
        );
    }
    assert_eq!(page.connections(), 0, "the page was fetched");
}

/// Issue 15: previews follow redirects, and every hop passes the guard: a hop to an address
/// outside the allowlist (127.0.0.2, with only 127.0.0.1 allowed) is refused before anything
/// connects to it; a hop by name to an allowed address is followed.
#[tokio::test]
async fn url_preview_redirects_are_checked_at_every_hop() {
    use paracord_complement::network::{StubAnswer, StubHttp};
    let html =
        r#"<html><head><meta property="og:title" content="Behind a redirect"></head></html>"#;
    let outside = StubHttp::start([127, 0, 0, 2], StubAnswer::ok("text/html", html)).await;
    let to_outside = StubHttp::start(
        [127, 0, 0, 1],
        StubAnswer::redirect(302, &format!("http://{}/page", outside.addr())),
    )
    .await;
    let inside = StubHttp::start([127, 0, 0, 1], StubAnswer::ok("text/html", html)).await;
    let to_inside = StubHttp::start(
        [127, 0, 0, 1],
        StubAnswer::redirect(301, &format!("http://localhost:{}/page", inside.port())),
    )
    .await;
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_IP_RANGE_ALLOWLIST", "127.0.0.1/32");
    })
    .await;
    let alice = server.register_random().await;
    let preview = |url: String| {
        let alice = &alice;
        async move {
            alice
                .get(&format!(
                    "/_matrix/client/v1/media/preview_url?url={}",
                    paracord_complement::enc(&url)
                ))
                .await
        }
    };
    let refused = preview(format!("http://{}/", to_outside.addr())).await;
    expect_error(
        &refused,
        StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        "a redirect to 127.0.0.2",
    );
    assert_eq!(to_outside.requests().len(), 1, "the first hop was asked");
    assert_eq!(outside.connections(), 0, "the refused hop was reached");
    let followed = expect_ok(
        preview(format!("http://{}/", to_inside.addr())).await,
        "a redirect to an allowed address",
    );
    assert_eq!(followed["og:title"], "Behind a redirect", "{followed}");
    assert_eq!(inside.requests(), vec!["GET /page HTTP/1.1".to_owned()]);
}

#[tokio::test]
async fn media_of_another_server_is_fetched_over_federation_and_cached() {
    let (a, _) = paracord_complement::federation::federating_server().await;
    let (b, _) = paracord_complement::federation::federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let up = call(
        &a,
        Some(&alice),
        reqwest::Method::POST,
        "/_matrix/media/v3/upload?filename=red%20dot.png",
        Some((PNG, "image/png")),
    )
    .await;
    assert_eq!(
        up.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&up.bytes)
    );
    let (srv, id) = mxc_parts(up.json()["content_uri"].as_str().unwrap());
    // Bob asks his own server, which asks A.
    let dl = call(
        &b,
        Some(&bob),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/download/{srv}/{id}"),
        None,
    )
    .await;
    assert_eq!(
        dl.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&dl.bytes)
    );
    assert_eq!(dl.bytes, PNG, "the same bytes through B");
    assert_eq!(dl.header("content-type"), "image/png");
    assert!(
        dl.header("content-disposition").contains("red%20dot.png"),
        "{}",
        dl.header("content-disposition")
    );
    let thumb = call(
        &b,
        Some(&bob),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/thumbnail/{srv}/{id}?width=8&height=8&method=scale"),
        None,
    )
    .await;
    assert_eq!(
        thumb.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&thumb.bytes)
    );
    png_size(&thumb.bytes);
    // Unknown media on A is a 404 through B.
    let missing = call(
        &b,
        Some(&bob),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/download/{srv}/nosuchmedia"),
        None,
    )
    .await;
    assert_eq!(
        missing.status,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&missing.bytes)
    );

    // Cached: B still serves it once A is gone.
    drop(a);
    let again = call(
        &b,
        Some(&bob),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/download/{srv}/{id}"),
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "served from B's cache");
    assert_eq!(again.bytes, PNG);
}

/// Issue 14: media of a server from before authenticated media (its federation media
/// endpoints answer 400) is fetched from its legacy download path; and this server's own
/// federation media answers end with the closing multipart delimiter (`--boundary--`).
#[tokio::test]
async fn media_of_a_legacy_server_comes_from_its_legacy_path() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let crate_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let script = std::path::Path::new(&crate_dir).join("support/legacy_media_server.py");
    let legacy = paracord_complement::ChildProcess::start(move |port| {
        let mut c = std::process::Command::new("python3");
        c.arg(script)
            .arg(port.to_string())
            .arg(&cert_path)
            .arg(&key_path);
        c
    })
    .await;
    let (b, b_name) = paracord_complement::federation::federating_server().await;
    let bob = b.register_random().await;
    let legacy_name = format!("127.0.0.1:{}", legacy.port);
    let dl = call(
        &b,
        Some(&bob),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/download/{legacy_name}/abc"),
        None,
    )
    .await;
    assert_eq!(
        dl.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&dl.bytes)
    );
    assert_eq!(dl.bytes, b"legacy bytes of abc");

    // B's own answer to another server, read raw.
    let up = call(
        &b,
        Some(&bob),
        reqwest::Method::POST,
        "/_matrix/media/v3/upload?filename=a.png",
        Some((PNG, "image/png")),
    )
    .await;
    let (_, id) = mxc_parts(up.json()["content_uri"].as_str().unwrap());
    let (a, a_name) = paracord_complement::federation::federating_server().await;
    let uri = format!("/_matrix/federation/v1/media/download/{id}");
    let auth = paracord_complement::federation::x_matrix(
        &paracord_complement::federation::server_signing_key(&a),
        &a_name,
        &b_name,
        "GET",
        &uri,
    );
    let resp = reqwest::Client::new()
        .get(format!("{}{uri}", b.base_url()))
        .header("Authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .unwrap_or_else(|| panic!("a boundary in {content_type}"))
        .to_owned();
    let body = resp.bytes().await.unwrap();
    assert!(
        body.ends_with(format!("--{boundary}--\r\n").as_bytes()),
        "the closing delimiter ends the body: {:?}",
        String::from_utf8_lossy(&body[body.len().saturating_sub(80)..])
    );
}

/// CRC-32 (ISO-HDLC, as PNG chunks use).
fn crc32(bytes: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (n, entry) in table.iter_mut().enumerate() {
        let mut c = n as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    !bytes.iter().fold(0xFFFF_FFFFu32, |c, b| {
        table[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A PNG of `width`×`height` pixels (8 bits per sample, RGB or RGBA) with a header and no
/// pixel data: what a decompression bomb's first bytes look like.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut out = vec![137, 80, 78, 71, 13, 10, 26, 10];
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x01]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A valid, all-black PNG: `bit_depth` 8 or 16, `color_type` 2 (RGB) or 6 (RGBA). Every
/// scanline is a zero filter byte and zero samples, so the image stream is one long run of
/// zeros, written by hand as DEFLATE with fixed Huffman codes: a literal 0, then copies of 258
/// bytes at distance 1 (13 bits each). A 6000×6000 16-bit RGBA image (288 MB decoded) takes
/// under 2 MB: a decompression bomb.
fn black_png(width: u32, height: u32, color_type: u8, bit_depth: u8) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        /// `len` bits of `value`, least significant first (DEFLATE's bit order).
        fn put(&mut self, value: u32, len: u32) {
            self.acc |= u64::from(value) << self.n;
            self.n += len;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// A Huffman code: most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            let reversed = (0..len).fold(0, |r, i| r | (((code >> i) & 1) << (len - 1 - i)));
            self.put(reversed, len);
        }
    }
    let channels: u64 = if color_type == 6 { 4 } else { 3 };
    let row = 1 + u64::from(width) * channels * u64::from(bit_depth / 8);
    let total = row * u64::from(height);
    let mut bits = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // last block
    bits.put(1, 2); // fixed Huffman codes
    bits.code(0x30, 8); // literal 0
    for _ in 0..(total - 1) / 258 {
        bits.code(0xC5, 8); // length 258 (code 285)
        bits.code(0, 5); // distance 1
    }
    for _ in 0..(total - 1) % 258 {
        bits.code(0x30, 8);
    }
    bits.code(0, 7); // end of block
    if bits.n > 0 {
        bits.out.push(bits.acc as u8);
    }
    // Adler-32 of zeros: a stays 1, b adds 1 per byte.
    let adler = (((total % 65521) as u32) << 16) | 1;
    bits.out.extend_from_slice(&adler.to_be_bytes());

    let mut out = vec![137, 80, 78, 71, 13, 10, 26, 10];
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &bits.out);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

async fn upload(server: &TestServer, user: &User, bytes: &[u8], content_type: &str) -> String {
    let up = call(
        server,
        Some(user),
        reqwest::Method::POST,
        "/_matrix/media/v3/upload",
        Some((bytes, content_type)),
    )
    .await;
    assert_eq!(
        up.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&up.bytes)
    );
    up.json()["content_uri"].as_str().unwrap().to_owned()
}

/// Issue 15: a decompression bomb (a tiny PNG declaring 100000×100000 pixels; a valid 2 MB
/// PNG that decodes to 288 MB) is refused with 413 `M_TOO_LARGE` before it is decoded, and
/// the server stays up and keeps making thumbnails.
#[tokio::test]
async fn thumbnails_of_decompression_bombs_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bombs = [
        ("6000x6000 16-bit RGBA", black_png(6000, 6000, 6, 16)),
        ("100000x100000 header", png_header_only(100_000, 100_000)),
    ];
    for (what, png) in &bombs {
        let (srv, id) = mxc_parts(&upload(&server, &alice, png, "image/png").await);
        for method in ["scale", "crop"] {
            let thumb = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                call(
                    &server,
                    Some(&alice),
                    reqwest::Method::GET,
                    &format!(
                        "/_matrix/client/v1/media/thumbnail/{srv}/{id}?width=32&height=32&method={method}"
                    ),
                    None,
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("the thumbnail of the {what} bomb took over 60 s"));
            assert_eq!(
                thumb.status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{what} ({method}): {}",
                String::from_utf8_lossy(&thumb.bytes)
            );
            assert_eq!(thumb.json()["errcode"], "M_TOO_LARGE", "{what}");
        }
    }
    let (srv, id) = mxc_parts(&upload(&server, &alice, PNG, "image/png").await);
    let thumb = call(
        &server,
        Some(&alice),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/thumbnail/{srv}/{id}?width=32&height=32"),
        None,
    )
    .await;
    assert_eq!(thumb.status, StatusCode::OK, "the server is still up");
    png_size(&thumb.bytes);
}

/// Issue 15: requested thumbnail sizes snap to a fixed set (32×32, 96×96, 320×240, 640×480,
/// 800×600), so asking for many distinct sizes makes at most that many thumbnails per method:
/// 100×100 and 101×101 get the same bytes.
#[tokio::test]
async fn thumbnail_sizes_snap_to_a_fixed_set() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let image = black_png(1000, 800, 2, 8);
    let (srv, id) = mxc_parts(&upload(&server, &alice, &image, "image/png").await);
    let thumb = |w: u32, h: u32, method: &'static str| {
        let (server, alice, srv, id) = (&server, &alice, &srv, &id);
        async move {
            let got = call(
                server,
                Some(alice),
                reqwest::Method::GET,
                &format!(
                    "/_matrix/client/v1/media/thumbnail/{srv}/{id}?width={w}&height={h}&method={method}"
                ),
                None,
            )
            .await;
            assert_eq!(
                got.status,
                StatusCode::OK,
                "{w}x{h} {method}: {}",
                String::from_utf8_lossy(&got.bytes)
            );
            got.bytes
        }
    };
    let a = thumb(100, 100, "scale").await;
    let b = thumb(101, 101, "scale").await;
    assert_eq!(png_size(&a), (300, 240), "fits 320×240, aspect kept");
    assert_eq!(a, b, "100×100 and 101×101 are the same thumbnail");
    assert_eq!(png_size(&thumb(100, 100, "crop").await), (320, 240));
    assert_eq!(png_size(&thumb(20, 20, "crop").await), (32, 32));

    let mut sizes = std::collections::BTreeSet::new();
    for i in 1..=60u32 {
        for method in ["scale", "crop"] {
            let (w, h) = (i * 17 % 997 + 1, i * 29 % 991 + 1);
            sizes.insert((method, png_size(&thumb(w, h, method).await)));
        }
    }
    assert!(
        sizes.len() <= 10,
        "at most 5 sizes × 2 methods, got {sizes:?}"
    );
    let files = std::fs::read_dir(server.data_dir().join("media/thumbnails"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    assert!(
        files <= 10,
        "at most 10 thumbnail files on disk for one image, found {files}"
    );
}

/// Issue 15: the legacy unauthenticated routes serve only what is here: another server's
/// media that was never fetched is a 404 there, and no connection to that server is made;
/// authenticated media fetches it, and from then on the legacy route serves the cached copy.
#[tokio::test]
async fn legacy_media_routes_never_fetch_from_other_servers() {
    let a = paracord_complement::federation::SplittableServer::start(|_| {}).await;
    let (b, _) = paracord_complement::federation::federating_server().await;
    let alice = a.server.register_random().await;
    let bob = b.register_random().await;
    let (srv, id) = mxc_parts(&upload(&a.server, &alice, PNG, "image/png").await);
    assert_eq!(srv, a.name);
    for path in [
        format!("/_matrix/media/v3/download/{srv}/{id}"),
        format!("/_matrix/media/v3/download/{srv}/{id}/red.png"),
        format!("/_matrix/media/v3/thumbnail/{srv}/{id}?width=32&height=32"),
    ] {
        let legacy = call(&b, None, reqwest::Method::GET, &path, None).await;
        assert_eq!(
            legacy.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            String::from_utf8_lossy(&legacy.bytes)
        );
        assert_eq!(legacy.json()["errcode"], "M_NOT_FOUND", "{path}");
    }
    assert_eq!(
        a.connections_in(),
        0,
        "the legacy routes made B connect to A"
    );
    let dl = call(
        &b,
        Some(&bob),
        reqwest::Method::GET,
        &format!("/_matrix/client/v1/media/download/{srv}/{id}"),
        None,
    )
    .await;
    assert_eq!(
        dl.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&dl.bytes)
    );
    assert_eq!(dl.bytes, PNG);
    assert!(a.connections_in() > 0, "authenticated media fetches from A");
    let legacy = call(
        &b,
        None,
        reqwest::Method::GET,
        &format!("/_matrix/media/v3/download/{srv}/{id}"),
        None,
    )
    .await;
    assert_eq!(legacy.status, StatusCode::OK, "the cached copy is served");
    assert_eq!(legacy.bytes, PNG);
}

/// `legacy_media_fetches_remote` opens the legacy routes to other servers' media again.
#[tokio::test]
async fn legacy_media_routes_fetch_when_the_operator_allows_it() {
    let (a, _) = paracord_complement::federation::federating_server().await;
    let (b, _) = paracord_complement::federation::federating_server_with(|env| {
        TestServer::set_env(env, "PARACORD_LEGACY_MEDIA_FETCHES_REMOTE", "true");
    })
    .await;
    let alice = a.register_random().await;
    let (srv, id) = mxc_parts(&upload(&a, &alice, PNG, "image/png").await);
    let legacy = call(
        &b,
        None,
        reqwest::Method::GET,
        &format!("/_matrix/media/v3/download/{srv}/{id}"),
        None,
    )
    .await;
    assert_eq!(
        legacy.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&legacy.bytes)
    );
    assert_eq!(legacy.bytes, PNG);
}

/// Issue 15: each origin's media is cached within `remote_media_cache_bytes_per_origin`;
/// past it, the origin's least recently used copy is evicted (the legacy route, which serves
/// only cached media, no longer has it) and fetched from the origin again when asked for.
#[tokio::test]
async fn remote_media_past_the_origin_quota_evicts_the_least_recently_used() {
    let a = paracord_complement::federation::SplittableServer::start(|_| {}).await;
    let (b, _) = paracord_complement::federation::federating_server_with(|env| {
        TestServer::set_env(env, "PARACORD_REMOTE_MEDIA_CACHE_BYTES_PER_ORIGIN", "250");
    })
    .await;
    let alice = a.server.register_random().await;
    let bob = b.register_random().await;
    let mut ids = Vec::new();
    for n in 1..=3u8 {
        let uri = upload(&a.server, &alice, &[b'0' + n; 100], "text/plain").await;
        ids.push(mxc_parts(&uri).1);
    }
    let srv = a.name.clone();
    let get = |id: String, authenticated: bool| {
        let (b, bob, srv) = (&b, &bob, &srv);
        async move {
            let path = if authenticated {
                format!("/_matrix/client/v1/media/download/{srv}/{id}")
            } else {
                format!("/_matrix/media/v3/download/{srv}/{id}")
            };
            call(
                b,
                authenticated.then_some(bob),
                reqwest::Method::GET,
                &path,
                None,
            )
            .await
        }
    };
    let (one, two, three) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    for id in [&one, &two] {
        assert_eq!(get(id.clone(), true).await.status, StatusCode::OK);
    }
    // One is used again, so two is the least recently used when three comes in.
    assert_eq!(get(one.clone(), true).await.bytes, vec![b'1'; 100]);
    assert_eq!(get(three.clone(), true).await.status, StatusCode::OK);
    assert_eq!(
        get(two.clone(), false).await.status,
        StatusCode::NOT_FOUND,
        "two was evicted"
    );
    assert_eq!(get(one.clone(), false).await.bytes, vec![b'1'; 100]);
    assert_eq!(get(three.clone(), false).await.bytes, vec![b'3'; 100]);

    // With A cut off, the cached copies are still served and the evicted one is not.
    a.split();
    assert_eq!(get(one.clone(), true).await.status, StatusCode::OK);
    let gone = get(two.clone(), true).await;
    assert_ne!(gone.status, StatusCode::OK, "two is no longer here");
    // Back online, two is fetched from A again.
    a.heal();
    let again = get(two.clone(), true).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&again.bytes)
    );
    assert_eq!(again.bytes, vec![b'2'; 100]);
}
