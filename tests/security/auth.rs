//! Security suite, credentials and sessions (issue 15): against the real `sandtrail up`,
//! nothing is readable without a credential, each role does only its part, the UI
//! signs in through a one-time link or a token and keeps a strict cookie, and a
//! request without a token is refused before its body is read.

use crate::common::Proc;
use anyhow::{bail, Context};
use std::path::Path;

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `sandtrail up --no-demo --agents 1` on free ports, killed when dropped.
pub(crate) struct Up {
    _proc: Proc,
    /// The UI and API listener, `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// The one-time sign-in link `up` printed.
    pub(crate) sign_in: String,
    pub(crate) dir: tempfile::TempDir,
}

impl Up {
    pub(crate) fn start(env: &[(&str, &str)]) -> anyhow::Result<Up> {
        let dir = tempfile::tempdir()?;
        let args: Vec<String> = [
            "up",
            "--no-demo",
            "--agents",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--router-listen",
            "127.0.0.1:0",
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.path().display().to_string()])
        .collect();
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let mut proc = Proc::spawn("up", dir.path(), &args, &env, |_| {})?;
        let mut printed = proc.printed(&["web UI:", "sign in:"])?;
        let sign_in = printed.pop().unwrap_or_default();
        let url = printed.pop().unwrap_or_default();
        Ok(Up {
            _proc: proc,
            url: url.trim_end_matches('/').to_string(),
            sign_in,
            dir,
        })
    }

    /// The token of `role` (`admin` is the file `token`) from the data dir.
    pub(crate) fn token(&self, role: &str) -> String {
        let name = if role == "admin" {
            "token".to_string()
        } else {
            format!("token.{role}")
        };
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

/// A client that follows no redirect (the tests look at them) and sends no token.
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client builds")
}

/// The status of `method path` with `token` as Bearer (when given).
async fn status(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, reqwest::header::HeaderMap, String)> {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let (s, h) = (resp.status().as_u16(), resp.headers().clone());
    Ok((s, h, resp.text().await.unwrap_or_default()))
}

fn challenges(h: &reqwest::header::HeaderMap) -> Vec<String> {
    h.get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_without_a_credential_is_refused() -> anyhow::Result<()> {
    let up = Up::start(&[])?;
    let http = http();
    let get = reqwest::Method::GET;
    for path in [
        "/api/v1/search?q=a",
        "/api/v1/tail?q=app:fib",
        "/api/v1/histogram",
        "/v2/apps",
        "/v2/tasks",
        "/v2/events",
        "/v1/services/fib",
        "/_search",
        "/ui/tail-stream?app=fib",
        "/metrics",
    ] {
        let (s, h, body) =
            status(&http, get.clone(), &format!("{}{path}", up.url), None, None).await?;
        assert_eq!(s, 401, "{path}: {body}");
        assert!(
            !challenges(&h).is_empty(),
            "{path} names how to authenticate"
        );
        let (s, _, _) = status(
            &http,
            get.clone(),
            &format!("{}{path}", up.url),
            Some("wrong"),
            None,
        )
        .await?;
        assert_eq!(s, 401, "{path} with an unknown token");
    }
    // UI pages send a person to the sign-in page, keeping where they were going.
    for (path, to) in [
        ("/", "/login"),
        ("/apps", "/login?next=/apps"),
        ("/tail/fib", "/login?next=/tail/fib"),
        ("/trace/abc", "/login?next=/trace/abc"),
    ] {
        let (s, h, _) =
            status(&http, get.clone(), &format!("{}{path}", up.url), None, None).await?;
        assert_eq!(s, 303, "{path}");
        assert_eq!(h[reqwest::header::LOCATION], to, "{path}");
    }
    // What stays open: liveness, Marathon's ping, the sign-in page and its assets.
    for path in ["/healthz", "/ping", "/login", "/static/app.css"] {
        let (s, _, _) =
            status(&http, get.clone(), &format!("{}{path}", up.url), None, None).await?;
        assert_eq!(s, 200, "{path}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_a_token_may_do() -> anyhow::Result<()> {
    let up = Up::start(&[])?;
    let http = http();
    let (read, deploy, agent, admin) = (
        up.token("read"),
        up.token("deploy"),
        up.token("agent"),
        up.token("admin"),
    );
    assert_eq!(read.len(), 64);
    let url = |p: &str| format!("{}{p}", up.url);
    let app = serde_json::json!({"id": "/sec", "cmd": "sleep 600", "instances": 0,
        "env": {"DB_PASSWORD": "hunter2"}});
    use reqwest::Method;

    // read: reads, cannot deploy.
    let (s, _, body) = status(
        &http,
        Method::POST,
        &url("/v2/apps"),
        Some(&read),
        Some(app.clone()),
    )
    .await?;
    assert_eq!(s, 403, "read token cannot deploy: {body}");
    assert!(body.contains("deploy"), "{body}");
    let (s, h, _) = status(
        &http,
        Method::POST,
        &url("/v2/apps"),
        Some(&read),
        Some(app.clone()),
    )
    .await?;
    assert_eq!((s, challenges(&h).len()), (403, 0));
    assert_eq!(
        status(
            &http,
            Method::GET,
            &url("/api/v1/search?q=a"),
            Some(&read),
            None
        )
        .await?
        .0,
        200
    );

    // deploy: deploys and sees env values; read sees the names only.
    let (s, _, body) = status(
        &http,
        Method::POST,
        &url("/v2/apps"),
        Some(&deploy),
        Some(app),
    )
    .await?;
    assert_eq!(s, 201, "{body}");
    let (_, _, as_read) = status(&http, Method::GET, &url("/v2/apps"), Some(&read), None).await?;
    assert!(
        as_read.contains("DB_PASSWORD") && !as_read.contains("hunter2"),
        "{as_read}"
    );
    let (_, _, as_read) =
        status(&http, Method::GET, &url("/v2/apps/sec"), Some(&read), None).await?;
    assert!(!as_read.contains("hunter2"), "{as_read}");
    let (_, _, as_deploy) = status(
        &http,
        Method::GET,
        &url("/v2/apps/sec"),
        Some(&deploy),
        None,
    )
    .await?;
    assert!(as_deploy.contains("hunter2"), "{as_deploy}");
    assert_eq!(
        status(
            &http,
            Method::DELETE,
            &url("/v2/apps/sec"),
            Some(&read),
            None
        )
        .await?
        .0,
        403
    );

    // agent: ingests and heartbeats, cannot read logs or apps.
    for path in ["/api/v1/search?q=a", "/v2/apps", "/_search", "/api/v1/tail"] {
        let (s, _, body) = status(&http, Method::GET, &url(path), Some(&agent), None).await?;
        assert_eq!(s, 403, "agent token cannot read {path}: {body}");
    }
    let resp = http
        .post(url("/api/v1/ingest"))
        .bearer_auth(&agent)
        .body("not gzip")
        .send()
        .await?;
    assert_eq!(resp.status(), 400, "past the gate, the body is judged");
    let resp = http
        .post(url("/api/v1/ingest"))
        .bearer_auth(&read)
        .body("not gzip")
        .send()
        .await?;
    assert_eq!(resp.status(), 403, "read token cannot ingest");

    // The schemes every client sends: lowercase bearer, Basic with the token as the
    // password (Elasticsearch clients), and our own header.
    let q = url("/api/v1/search?q=a");
    let lower = http
        .get(&q)
        .header("authorization", format!("bearer {read}"))
        .send()
        .await?;
    assert_eq!(lower.status(), 200);
    let basic = http
        .get(url("/_search"))
        .basic_auth("elastic", Some(&read))
        .send()
        .await?;
    assert_eq!(basic.status(), 200);
    let own = http
        .get(&q)
        .header(protocol::TOKEN_HEADER, &admin)
        .send()
        .await?;
    assert_eq!(own.status(), 200);
    Ok(())
}

/// The session cookie of a response, with its attributes.
fn set_cookie(h: &reqwest::header::HeaderMap) -> Option<String> {
    h.get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_link_signs_in_once_with_a_strict_httponly_cookie() -> anyhow::Result<()> {
    let up = Up::start(&[])?;
    let http = http();
    assert!(
        up.sign_in.starts_with(&format!("{}/login?once=", up.url)),
        "{}",
        up.sign_in
    );
    let resp = http.get(&up.sign_in).send().await?;
    assert_eq!(resp.status(), 303);
    let cookie = set_cookie(resp.headers()).context("the link sets a cookie")?;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_string();

    // The cookie opens the pages, which carry the UI's security headers.
    let page = http
        .get(format!("{}/apps", up.url))
        .header(reqwest::header::COOKIE, &session)
        .send()
        .await?;
    assert_eq!(page.status(), 200);
    let h = page.headers();
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp = h["content-security-policy"].to_str()?;
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    // Used once: the second opening is refused and sets nothing.
    let again = http.get(&up.sign_in).send().await?;
    assert_eq!(again.status(), 401);
    assert!(set_cookie(again.headers()).is_none());

    // Signing out ends the session on the server, not only in the browser.
    let out = http
        .post(format!("{}/logout", up.url))
        .header(reqwest::header::COOKIE, &session)
        .send()
        .await?;
    assert_eq!(out.status(), 303);
    assert!(set_cookie(out.headers())
        .unwrap_or_default()
        .contains("Max-Age=0"));
    let after = http
        .get(format!("{}/apps", up.url))
        .header(reqwest::header::COOKIE, &session)
        .send()
        .await?;
    assert_eq!(after.status(), 303, "the old cookie no longer opens pages");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_form_takes_tokens_that_may_read() -> anyhow::Result<()> {
    let up = Up::start(&[])?;
    let http = http();
    let login = format!("{}/login", up.url);
    let post = |token: String| {
        http.post(&login)
            .form(&[("token", token.as_str()), ("next", "/apps")])
            .send()
    };
    let ok = post(up.token("read")).await?;
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()[reqwest::header::LOCATION], "/apps");
    assert!(set_cookie(ok.headers())
        .unwrap_or_default()
        .contains("HttpOnly"));
    let agent = post(up.token("agent")).await?;
    assert_eq!(agent.status(), 403, "an agent token cannot read logs");
    assert!(set_cookie(agent.headers()).is_none());
    let wrong = post("wrong".into()).await?;
    assert_eq!(wrong.status(), 401);
    // A form posted from another site is refused (login CSRF).
    let cross = http
        .post(&login)
        .header(reqwest::header::ORIGIN, "http://evil.example")
        .form(&[("token", up.token("read"))])
        .send()
        .await?;
    assert_eq!(cross.status(), 403);
    // An open redirect is not: `next` stays on this site.
    let away = http
        .post(&login)
        .form(&[
            ("token", up.token("read").as_str()),
            ("next", "//evil.example/"),
        ])
        .send()
        .await?;
    assert_eq!(away.headers()[reqwest::header::LOCATION], "/");
    Ok(())
}

/// Sends the head of a `POST path` announcing a 60 MiB body and none of it; returns
/// the status line of the answer, which must come without the body being sent.
pub(crate) async fn post_head_only(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        60 << 20
    );
    tcp.write_all(head.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .context("no answer within 5 s: the server waits for the body")??;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text.lines().next().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_without_a_token_is_refused_before_its_body_is_read() -> anyhow::Result<()> {
    let up = Up::start(&[])?;
    let addr = up.url.trim_start_matches("http://").to_string();
    for path in ["/api/v1/ingest", "/_bulk", "/logs/_bulk", "/v2/apps"] {
        let line = post_head_only(&addr, path).await?;
        assert!(line.starts_with("HTTP/1.1 401"), "{path}: {line:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_header_not_allowed_is_misdirected() -> anyhow::Result<()> {
    let up = Up::start(&[])?;
    let http = http();
    let read = up.token("read");
    let search = format!("{}/api/v1/search?q=a", up.url);
    // DNS rebinding: a page on evil.example resolving to 127.0.0.1.
    let evil = http
        .get(&search)
        .header(reqwest::header::HOST, "evil.example:7070")
        .bearer_auth(&read)
        .send()
        .await?;
    assert_eq!(evil.status(), 421);
    let local = http
        .get(&search)
        .header(reqwest::header::HOST, "localhost")
        .bearer_auth(&read)
        .send()
        .await?;
    assert_eq!(local.status(), 200);
    let health = http
        .get(format!("{}/healthz", up.url))
        .header(reqwest::header::HOST, "10.1.2.3")
        .send()
        .await?;
    assert_eq!(health.status(), 200, "probes address /healthz by ip");

    // Configured names replace the default.
    let named = Up::start(&[("SANDTRAIL_HTTP_ALLOWED_HOSTS", "logs.example")])?;
    let r = http
        .get(format!("{}/api/v1/search?q=a", named.url))
        .header(reqwest::header::HOST, "logs.example")
        .bearer_auth(named.token("read"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

/// Issue 15: the token came from a hash seed and was written before its mode was set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_makes_a_private_random_token_per_role() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let up = Up::start(&[])?;
    let mut seen = std::collections::BTreeSet::new();
    for (role, file) in [
        ("admin", "token"),
        ("read", "token.read"),
        ("deploy", "token.deploy"),
        ("agent", "token.agent"),
    ] {
        let path: &Path = &up.dir.path().join(file);
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
        let t = up.token(role);
        assert!(
            t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()),
            "{file}: {t:?}"
        );
        assert!(seen.insert(t), "{file} is its own token");
    }
    // The agent `up` starts registers, which the agent role allows (it is given
    // the agent token, not the admin one; see serve::up).
    let http = http();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, body) = status(
            &http,
            reqwest::Method::GET,
            &format!("{}/v1/agents", up.url),
            Some(&up.token("read")),
            None,
        )
        .await?;
        if body.contains("node-1") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent never registered: {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
