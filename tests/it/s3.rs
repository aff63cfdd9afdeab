//! S3 for the tests: the moto server scripts/test starts (found through `CHATETL_TEST_S3`), a
//! bucket per test, the `chatetl` binary with the AWS variables object_store reads, the bucket's
//! objects as S3 lists them, and a [`FaultProxy`] to put between chatetl and the server.
//!
//! moto accepts any credentials and needs none for the tests' own bucket creation and listing,
//! which go to it unsigned (it refuses an unsigned GET of an object).

use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;

pub const ACCESS_KEY: &str = "chatetl-test-access-key";
pub const SECRET_KEY: &str = "chatetl-test-secret-key";
pub const REGION: &str = "us-east-1";

/// The S3 server's endpoint, `http://127.0.0.1:PORT`.
pub fn endpoint() -> String {
    std::env::var("CHATETL_TEST_S3").expect("CHATETL_TEST_S3 is set: run the suite with scripts/test")
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub etag: String,
    pub size: u64,
}

/// A bucket of its own for one test, on the S3 server.
pub struct Bucket {
    pub name: String,
    pub endpoint: String,
}

impl Bucket {
    pub async fn new() -> Bucket {
        let endpoint = endpoint();
        let name = format!("chatetl-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let resp = reqwest::Client::new().put(format!("{endpoint}/{name}")).send().await.expect("reach the S3 server");
        assert!(resp.status().is_success(), "create bucket {name}: {}", resp.status());
        Bucket { name, endpoint }
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.name)
    }

    /// Every object whose key starts with `prefix`, in key order.
    pub async fn objects(&self, prefix: &str) -> Vec<Object> {
        let resp = reqwest::Client::new()
            .get(format!("{}/{}", self.endpoint, self.name))
            .query(&[("list-type", "2"), ("prefix", prefix)])
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "list {}: {}", self.name, resp.status());
        let xml = resp.text().await.unwrap();
        assert!(xml.contains("<IsTruncated>false</IsTruncated>"), "one page lists the bucket: {xml}");
        let tag = |s: &str, t: &str| -> String {
            let from = s.find(&format!("<{t}>")).unwrap_or_else(|| panic!("no <{t}> in {s}")) + t.len() + 2;
            s[from..from + s[from..].find(&format!("</{t}>")).unwrap()].to_string()
        };
        xml.split("<Contents>")
            .skip(1)
            .map(|c| Object {
                key: tag(c, "Key").replace("&amp;", "&"),
                etag: tag(c, "ETag").replace("&quot;", "\"").replace("&#34;", "\""),
                size: tag(c, "Size").parse().unwrap(),
            })
            .collect()
    }
}

/// The `chatetl` binary with the AWS variables set for `endpoint` (the S3 server or a proxy in
/// front of it) and none of the machine's own AWS settings.
pub fn command(endpoint: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatetl"));
    cmd.env_remove("RUST_LOG");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", REGION)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true");
    cmd
}

/// Runs [`command`] with `args` to its end: (status code, stdout, stderr).
pub fn chatetl(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    crate::util::output(command(endpoint).args(args))
}

/// What the proxy does with a request a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503 with S3's `SlowDown` error (throttling).
    SlowDown,
    /// 500 with S3's `InternalError`.
    InternalError,
    /// 403 with S3's `AccessDenied`.
    AccessDenied,
    /// Read the request's body, then never answer nor forward it.
    Hold,
}

/// One request the proxy saw: its path (decoded), the status it answered (0: held), and the
/// fault it injected.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub fault: Option<Fault>,
}

struct Rule {
    method: Option<Method>,
    path_contains: String,
    remaining: usize,
    fault: Fault,
}

struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Logged>>,
    held: tokio::sync::watch::Sender<usize>,
}

/// An HTTP reverse proxy on 127.0.0.1:0 in front of the S3 server: forwards every request,
/// except those its rules fault, and logs each one.
pub struct FaultProxy {
    pub url: String,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            held: tokio::sync::watch::channel(0).0,
        });
        let app = axum::Router::new().fallback(proxy).with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FaultProxy { url, state, task }
    }

    /// Faults the next `n` requests of `method` (any method: `None`) whose decoded path contains
    /// `path_contains`. Rules apply in the order they were added, each until its `n` are used.
    pub fn fault(&self, method: Option<Method>, path_contains: &str, n: usize, fault: Fault) {
        let rule = Rule { method, path_contains: path_contains.to_string(), remaining: n, fault };
        self.state.rules.lock().unwrap().push(rule);
    }

    /// Every request so far, in the order they arrived.
    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// How many requests `fault` was injected into so far.
    pub fn injected(&self, fault: Fault) -> usize {
        self.log().iter().filter(|l| l.fault == Some(fault)).count()
    }

    /// Changes to the number of requests held so far.
    pub fn held(&self) -> tokio::sync::watch::Receiver<usize> {
        self.state.held.subscribe()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// S3's XML error answer.
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <RequestId>chatetl-fault-proxy</RequestId></Error>"
    );
    Response::builder().status(status).header("content-type", "application/xml").body(Body::from(body)).unwrap()
}

async fn proxy(State(st): State<Arc<ProxyState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = percent_decoded(parts.uri.path());
    let target = parts.uri.path_and_query().map_or(path.clone(), |p| p.to_string());
    // The body is read whole before anything else, held requests included.
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return s3_error(StatusCode::BAD_REQUEST, "IncompleteBody", "the proxy could not read the body");
    };
    let fault = {
        let mut rules = st.rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| {
                r.remaining > 0
                    && r.method.as_ref().is_none_or(|m| *m == parts.method)
                    && path.contains(&r.path_contains)
            })
            .map(|r| {
                r.remaining -= 1;
                r.fault
            })
    };
    let log = |status: u16| {
        st.log.lock().unwrap().push(Logged { method: parts.method.clone(), path: path.clone(), status, fault });
    };
    let answer = match fault {
        Some(Fault::Hold) => {
            log(0);
            st.held.send_modify(|n| *n += 1);
            return std::future::pending().await;
        }
        Some(Fault::SlowDown) => {
            s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown", "Please reduce your request rate.")
        }
        Some(Fault::InternalError) => s3_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        Some(Fault::AccessDenied) => s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied"),
        None => forward(&st, &parts, &target, body).await,
    };
    log(answer.status().as_u16());
    answer
}

/// `path` with its `%XX` escapes decoded (object_store sends `year=2024` as `year%3D2024`).
fn percent_decoded(path: &str) -> String {
    let mut out = Vec::with_capacity(path.len());
    let mut bytes = path.bytes();
    while let Some(b) = bytes.next() {
        let hex = |b: Option<u8>| b.and_then(|b| (b as char).to_digit(16));
        if b == b'%' {
            let (hi, lo) = (bytes.next(), bytes.next());
            match (hex(hi), hex(lo)) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => out.extend([Some(b), hi, lo].into_iter().flatten()),
            }
        } else {
            out.push(b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn forward(st: &ProxyState, parts: &axum::http::request::Parts, target: &str, body: bytes::Bytes) -> Response {
    let mut req = st.client.request(parts.method.clone(), format!("{}{target}", st.upstream)).body(body);
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection" | "transfer-encoding" | "expect") {
            req = req.header(name, value);
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return s3_error(StatusCode::BAD_GATEWAY, "ProxyError", &format!("upstream: {e}")),
    };
    let mut out = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !matches!(name.as_str(), "connection" | "transfer-encoding") {
            out = out.header(name, value);
        }
    }
    match resp.bytes().await {
        Ok(bytes) => out.body(Body::from(bytes)).unwrap(),
        Err(e) => s3_error(StatusCode::BAD_GATEWAY, "ProxyError", &format!("upstream body: {e}")),
    }
}

/// The proxy itself, against the S3 server: it forwards, faults the requests its rules match
/// (and counts them), and holds a PUT without forwarding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_forwards_faults_and_holds() {
    let bucket = Bucket::new().await;
    let proxy = FaultProxy::start(&bucket.endpoint).await;
    let client = reqwest::Client::new();
    let put = |key: &str| client.put(format!("{}/{}/{key}", proxy.url, bucket.name)).body("rows").send();

    proxy.fault(Some(Method::PUT), "/a", 1, Fault::SlowDown);
    let throttled = put("p/a").await.unwrap();
    assert_eq!(throttled.status(), 503);
    assert!(throttled.text().await.unwrap().contains("<Code>SlowDown</Code>"));
    assert_eq!(put("p/a").await.unwrap().status(), 200, "one fault, then forwarded");
    // moto answers an unsigned GET of an object 403; any signature will do.
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20240101/{REGION}/s3/aws4_request, SignedHeaders=host, Signature=0"
    );
    let get =
        client.get(format!("{}/{}/p/a", proxy.url, bucket.name)).header("authorization", auth).send().await.unwrap();
    assert_eq!((get.status().as_u16(), get.text().await.unwrap()), (200, "rows".to_string()));

    proxy.fault(Some(Method::PUT), "/year=2024", usize::MAX, Fault::Hold);
    let mut held = proxy.held();
    let pending = tokio::spawn(put("p/year%3D2024"));
    tokio::time::timeout(std::time::Duration::from_secs(60), held.wait_for(|n| *n == 1)).await.unwrap().unwrap();
    assert!(!pending.is_finished(), "a held PUT is not answered");
    pending.abort();

    let keys: Vec<_> = bucket.objects("p/").await.into_iter().map(|o| (o.key, o.size)).collect();
    assert_eq!(keys, [("p/a".to_string(), 4)], "the held PUT was not forwarded");
    let log: Vec<_> = proxy.log().into_iter().map(|l| (l.method.to_string(), l.path, l.status)).collect();
    let path = |k: &str| format!("/{}/p/{k}", bucket.name);
    let want =
        [("PUT", path("a"), 503), ("PUT", path("a"), 200), ("GET", path("a"), 200), ("PUT", path("year=2024"), 0)];
    assert_eq!(log, want.map(|(m, p, s)| (m.to_string(), p, s)));
    assert_eq!((proxy.injected(Fault::SlowDown), proxy.injected(Fault::Hold)), (1, 1));
}
