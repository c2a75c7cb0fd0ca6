//! The HTTP shell: accept connections (TLS when configured), bound them,
//! check credentials, route, and turn results into JSON answers.
//!
//! The one rule that scripts depend on is checked before any routing:
//! every path under `/api/` — known or not — answers 401 without a
//! credential, so nothing under it can be probed anonymously. Outside
//! `/api/` only the page's static files, `POST /login`, `POST /logout` and
//! (when the configuration makes it public) `/metrics` answer without one.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::engine::RunFilter;
use crate::error::Error;
use crate::{State, assets};

/// A response body: whole, or a stream (SSE).
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The largest request body read (JSON job definitions, restores, logins).
const MAX_BODY: usize = 1 << 20;
/// Connections served at once; more wait in the kernel's backlog.
pub(crate) const MAX_CONNECTIONS: usize = 256;

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = ctype.parse() {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", header::HeaderValue::from_static("nosniff"));
    r
}

fn json_answer(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", serde_json::to_vec(v).unwrap_or_default())
}

fn error_answer(e: &Error) -> Response<Body> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_answer(status, &json!({"error": e.to_string(), "status": status.as_u16()}))
}

fn unauthorized() -> Response<Body> {
    let mut r = json_answer(StatusCode::UNAUTHORIZED, &json!({"error": "credentials required", "status": 401}));
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"alike\""));
    r
}

/// One request, start to end.
pub(crate) async fn handle(
    state: Arc<State>,
    peer: std::net::IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let r = route(&state, peer, req, &path).await;
    tracing::debug!(%method, %path, status = r.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
    Ok(r)
}

async fn route(state: &Arc<State>, peer: std::net::IpAddr, req: Request<Incoming>, path: &str) -> Response<Body> {
    let m = req.method().clone();
    if path == "/api" || path.starts_with("/api/") {
        if !state.auth.allows(req.headers()) {
            return unauthorized();
        }
        return api(state, req, path).await;
    }
    match (&m, path) {
        (&Method::GET, "/") | (&Method::GET, "/index.html") => {
            full(StatusCode::OK, "text/html; charset=utf-8", assets::INDEX)
        }
        (&Method::GET, "/app.js") => full(StatusCode::OK, "text/javascript; charset=utf-8", assets::APP_JS),
        (&Method::GET, "/app.css") => full(StatusCode::OK, "text/css; charset=utf-8", assets::APP_CSS),
        (&Method::GET, "/metrics") => {
            if !state.metrics_public && !state.auth.allows(req.headers()) {
                return unauthorized();
            }
            let st = state.clone();
            match tokio::task::spawn_blocking(move || st.metrics()).await {
                Ok(text) => full(StatusCode::OK, crate::metrics::CONTENT_TYPE, text),
                Err(_) => full(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "metrics failed"),
            }
        }
        (&Method::POST, "/login") => login(state, peer, req).await,
        (&Method::POST, "/logout") => {
            state.auth.logout(req.headers());
            let mut r = json_answer(StatusCode::OK, &json!({"ok": true}));
            if let Ok(v) = format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0", crate::auth::COOKIE).parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        _ => json_answer(StatusCode::NOT_FOUND, &json!({"error": format!("no page {path}"), "status": 404})),
    }
}

async fn body_json(req: Request<Incoming>) -> Result<Value, Error> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| Error::BadRequest(format!("request body: {e}")))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::BadRequest(format!("request body is not JSON: {e}")))
}

async fn login(state: &Arc<State>, peer: std::net::IpAddr, req: Request<Incoming>) -> Response<Body> {
    #[derive(serde::Deserialize)]
    struct Login {
        user: String,
        password: String,
    }
    let v = match body_json(req).await {
        Ok(v) => v,
        Err(e) => return error_answer(&e),
    };
    let Ok(l) = serde_json::from_value::<Login>(v) else {
        return error_answer(&Error::BadRequest("login: {\"user\": ..., \"password\": ...}".into()));
    };
    match state.auth.login(peer, &l.user, &l.password).await {
        crate::auth::Login::Ok(id) => {
            let secure = if state.tls { "; Secure" } else { "" };
            let cookie = format!(
                "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                crate::auth::COOKIE,
                state.session_seconds
            );
            let mut r = json_answer(StatusCode::OK, &json!({"ok": true, "user": l.user}));
            if let Ok(v) = cookie.parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        crate::auth::Login::Wrong => {
            tracing::warn!(user = %l.user, %peer, "failed login");
            json_answer(StatusCode::UNAUTHORIZED, &json!({"error": "wrong user name or password", "status": 401}))
        }
        crate::auth::Login::Limited(wait) => {
            // Whole seconds, rounded up: a client waiting that long is let in.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::warn!(user = %l.user, %peer, retry_after = secs, "login refused: too many failed logins");
            let mut r = json_answer(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": format!("too many failed logins: try again in {secs} s"), "status": 429, "retry_after": secs}),
            );
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            r
        }
    }
}

/// Runs a blocking engine call off the reactor.
async fn blocking(f: impl FnOnce() -> Result<Value, Error> + Send + 'static) -> Response<Body> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => json_answer(StatusCode::OK, &v),
        Ok(Err(e)) => error_answer(&e),
        Err(_) => error_answer(&Error::BadRequest("the request's worker failed".into())),
    }
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri().query().map(form_pairs).unwrap_or_default()
}

/// `a=1&b=x%20y` → pairs, percent-decoded.
fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    decode_with(s, true)
}

/// Percent-decoding; `+` is a space only in query strings.
fn decode_with(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn api(state: &Arc<State>, req: Request<Incoming>, path: &str) -> Response<Body> {
    let segs: Vec<String> =
        path.trim_start_matches("/api").split('/').filter(|s| !s.is_empty()).map(|s| decode_with(s, false)).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = req.method().clone();
    let st = state.clone();
    match (&m, segs.as_slice()) {
        (&Method::GET, ["openapi.json"]) => full(StatusCode::OK, "application/json", assets::OPENAPI),
        (&Method::GET, ["session"]) => json_answer(StatusCode::OK, &json!({"ok": true})),
        (&Method::GET, ["jobs"]) => blocking(move || st.engine.jobs()).await,
        (&Method::PUT, ["jobs", name]) => {
            let name = name.to_string();
            match body_json(req).await {
                Ok(def) => blocking(move || st.engine.put_job(&name, def)).await,
                Err(e) => error_answer(&e),
            }
        }
        (&Method::DELETE, ["jobs", name]) => {
            let name = name.to_string();
            blocking(move || st.engine.delete_job(&name).map(|()| json!({"ok": true}))).await
        }
        (&Method::POST, ["jobs", name, "run"]) => {
            let name = name.to_string();
            blocking(move || st.engine.run_job(&name)).await
        }
        (&Method::POST, ["runs", run, "cancel"]) => {
            let run = run.to_string();
            blocking(move || st.engine.cancel_run(&run).map(|()| json!({"ok": true}))).await
        }
        (&Method::GET, ["runs"]) => {
            let mut f = RunFilter::default();
            for (k, v) in query(&req) {
                match k.as_str() {
                    "job" => f.job = Some(v),
                    "vm" => f.vm = Some(v),
                    "result" => f.result = Some(v),
                    "since_ms" => match v.parse() {
                        Ok(n) => f.since_ms = Some(n),
                        Err(_) => return error_answer(&Error::BadRequest(format!("since_ms {v:?} is not a number"))),
                    },
                    "limit" => match v.parse::<usize>() {
                        Ok(n) if n <= 1000 => f.limit = Some(n),
                        _ => return error_answer(&Error::BadRequest(format!("limit {v:?}: 0 to 1000"))),
                    },
                    _ => return error_answer(&Error::BadRequest(format!("unknown filter {k:?}"))),
                }
            }
            blocking(move || st.engine.runs(&f)).await
        }
        (&Method::GET, ["stores"]) => blocking(move || st.stores.summary()).await,
        (&Method::GET, ["vms"]) => {
            let store = query(&req).into_iter().find(|(k, _)| k == "store").map(|(_, v)| v);
            blocking(move || st.stores.vms(store.as_deref())).await
        }
        (&Method::GET, ["destinations"]) => json_answer(StatusCode::OK, &json!(state.destination_names)),
        (&Method::POST, ["restore"]) => match body_json(req).await {
            Ok(v) => match serde_json::from_value::<crate::RestoreRequest>(v) {
                Ok(r) => blocking(move || st.stores.restore(&r)).await,
                Err(e) => error_answer(&Error::BadRequest(format!("restore request: {e}"))),
            },
            Err(e) => error_answer(&e),
        },
        (&Method::POST, ["restore-vm"]) => match body_json(req).await {
            Ok(v) => blocking(move || st.engine.restore_vm(v)).await,
            Err(e) => error_answer(&e),
        },
        (&Method::GET, ["pools"]) => json_answer(StatusCode::OK, &json!(state.engine.pools())),
        (&Method::GET, ["events"]) => events(state),
        _ => json_answer(StatusCode::NOT_FOUND, &json!({"error": format!("no API path {m} {path}"), "status": 404})),
    }
}

/// `GET /api/events`: server-sent events from the bus, a comment every 15 s
/// so proxies keep the stream open, `event: lagged` when this subscriber
/// fell more than the bus holds behind.
fn events(state: &Arc<State>) -> Response<Body> {
    let rx = state.events.subscribe();
    let tick = tokio::time::interval(Duration::from_secs(15));
    let hello = Some(Bytes::from_static(b": alike events\n\n"));
    let stream = futures_util::stream::unfold((rx, tick, hello), |(mut rx, mut tick, hello)| async move {
        if let Some(h) = hello {
            return Some((Ok::<_, Infallible>(Frame::data(h)), (rx, tick, None)));
        }
        let chunk = tokio::select! {
            ev = rx.recv() => match ev {
                Ok(e) => {
                    let data = serde_json::to_string(&e).unwrap_or_default();
                    format!("id: {}\nevent: {}\ndata: {}\n\n", e.seq, e.kind, data)
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => format!("event: lagged\ndata: {{\"missed\": {n}}}\n\n"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            },
            _ = tick.tick() => ": keep-alive\n\n".to_string(),
        };
        Some((Ok(Frame::data(Bytes::from(chunk))), (rx, tick, None)))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        assert_eq!(
            form_pairs("job=nightly%20web&vm=a+b&x=%zz&y=%4"),
            vec![
                ("job".into(), "nightly web".into()),
                ("vm".into(), "a b".into()),
                ("x".into(), "%zz".into()),
                ("y".into(), "%4".into())
            ]
        );
    }
}
