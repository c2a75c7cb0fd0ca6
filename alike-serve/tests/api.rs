//! The daemon over real sockets: credentials on every `/api/` path,
//! `/metrics` public or not, login sessions, restores only into allowed
//! destinations, the event stream, one daemon per database.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

const TOKEN: &str = "test-token-0123456789abcdef";
const PASSWORD: &str = "correct horse battery";

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    addr: SocketAddr,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    disk: Vec<u8>,
    version: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn fixture(metrics_public: bool) -> Fixture {
    fixture_with(metrics_public, "")
}

fn fixture_with(metrics_public: bool, extra: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let store =
        alike::Store::builder().no_encryption().cache_dir(root.join("cache0")).create(root.join("store")).unwrap();
    let disk: Vec<u8> = (0..307_200u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let src = alike::MemSource { label: "xvda".into(), data: disk.clone() };
    let version = store.backup(alike::VmInfo::named("web-01"), &[&src], &Default::default()).unwrap().version.id;
    drop(store);
    std::fs::create_dir(root.join("restores")).unwrap();
    std::fs::write(root.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::create_dir(root.join("cache")).unwrap();
    std::fs::write(root.join("hash"), alike_serve::hash_password(PASSWORD).unwrap()).unwrap();
    let text = format!(
        "[serve]\nlisten = \"127.0.0.1:0\"\ndatabase = \"state/alike.redb\"\nmetrics_public = {metrics_public}\n\
         restore_destinations = {{ scratch = \"restores\" }}\n{extra}\
         [serve.admin]\nuser = \"admin\"\npassword_hash_file = \"hash\"\ntoken = {{ file = \"token\" }}\n\
         [[store]]\nname = \"main\"\npath = \"store\"\ncache_dir = \"cache\"\n"
    );
    std::fs::write(root.join("alike.toml"), text).unwrap();
    let cfg = alike_serve::load_config(&root.join("alike.toml")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let lock = alike_serve::lock_database(&alike_serve::serve_table(&cfg).unwrap().database).unwrap();
    let (addr, stop) = rt.block_on(async {
        let daemon =
            alike_serve::Daemon::new(&cfg, lock, Arc::new(alike_serve::NoScheduler), alike_serve::Events::default())
                .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(daemon.serve(l, async move {
            let _ = rx.await;
        }));
        (addr, tx)
    });
    Fixture { _dir: dir, root, addr, rt, stop: Some(stop), disk, version }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 request with `Connection: close`.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Answer {
    request_from(addr, None, method, path, headers, body)
}

/// [`request`] from a chosen loopback address (the daemon tells clients
/// apart by the TCP peer's address).
fn request_from(
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let mut s = match from {
        None => TcpStream::connect(addr).unwrap(),
        Some(ip) => {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::new(ip, 0).into()).unwrap();
            s.connect(&addr.into()).unwrap();
            s.into()
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

#[test]
fn every_api_path_needs_a_credential() {
    let f = fixture(false);
    let paths = [
        ("GET", "/api"),
        ("GET", "/api/"),
        ("GET", "/api/openapi.json"),
        ("GET", "/api/session"),
        ("GET", "/api/jobs"),
        ("PUT", "/api/jobs/x"),
        ("DELETE", "/api/jobs/x"),
        ("POST", "/api/jobs/x/run"),
        ("GET", "/api/runs"),
        ("POST", "/api/runs/1/cancel"),
        ("GET", "/api/stores"),
        ("GET", "/api/vms"),
        ("GET", "/api/destinations"),
        ("POST", "/api/restore"),
        ("POST", "/api/restore-vm"),
        ("GET", "/api/pools"),
        ("GET", "/api/events"),
        ("GET", "/api/no/such/path"),
        ("PATCH", "/api/../api/vms"),
    ];
    let wrong = format!("Bearer {TOKEN}x");
    let bad_cookie = format!("alike_session={}", "ab".repeat(32));
    for (m, p) in paths {
        for h in [vec![], vec![("Authorization", wrong.as_str())], vec![("Cookie", bad_cookie.as_str())]] {
            let a = request(f.addr, m, p, &h, None);
            assert_eq!(a.status, 401, "{m} {p} {h:?}");
            assert_eq!(a.json()["status"], 401);
        }
    }
    // With the token, the same paths answer (what they answer is theirs).
    let a = request(f.addr, "GET", "/api/openapi.json", &[("Authorization", &bearer())], None);
    assert_eq!(a.status, 200);
    let spec = a.json();
    assert_eq!(spec["openapi"], "3.0.3");
    for p in ["/api/jobs", "/api/runs", "/api/vms", "/api/restore", "/api/events", "/metrics"] {
        assert!(spec["paths"].get(p).is_some(), "{p} is described");
    }
    // Without a scheduler the job paths say so rather than pretend.
    assert_eq!(request(f.addr, "GET", "/api/jobs", &[("Authorization", &bearer())], None).status, 501);
    // The page itself is public (it holds no data).
    let page = request(f.addr, "GET", "/", &[], None);
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("alike Manager"));
}

#[test]
fn metrics_are_private_unless_configured() {
    let f = fixture(false);
    assert_eq!(request(f.addr, "GET", "/metrics", &[], None).status, 401);
    let a = request(f.addr, "GET", "/metrics", &[("Authorization", &bearer())], None);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some(alike_serve::METRICS_CONTENT_TYPE));
    let text = String::from_utf8(a.body).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("alike_store_versions{store=\"main\"} 1\n"), "{text}");
    assert!(text.contains("alike_vm_last_version_timestamp_seconds{store=\"main\",vm=\"web-01\"}"), "{text}");

    let open = fixture(true);
    let a = request(open.addr, "GET", "/metrics", &[], None);
    assert_eq!(a.status, 200);
    assert!(String::from_utf8(a.body).unwrap().contains("alike_store_logical_bytes{store=\"main\"} 307200\n"));
}

#[test]
fn login_sets_a_session_cookie() {
    let f = fixture(false);
    let bad = request(f.addr, "POST", "/login", &[], Some(&json!({"user": "admin", "password": "wrong"})));
    assert_eq!(bad.status, 401);
    assert!(bad.header("set-cookie").is_none());
    let ok = request(f.addr, "POST", "/login", &[], Some(&json!({"user": "admin", "password": PASSWORD})));
    assert_eq!(ok.status, 200);
    let cookie = ok.header("set-cookie").unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let vms = request(f.addr, "GET", "/api/vms", &[("Cookie", &pair)], None);
    assert_eq!(vms.status, 200);
    let v = vms.json();
    assert_eq!(v[0]["vm"], "web-01");
    assert_eq!(v[0]["versions"][0]["id"], f.version);
    let stores = request(f.addr, "GET", "/api/stores", &[("Cookie", &pair)], None).json();
    assert_eq!(stores[0]["series"][0]["logical_bytes"], 307200);
    // Logging out ends the session.
    assert_eq!(request(f.addr, "POST", "/logout", &[("Cookie", &pair)], None).status, 200);
    assert_eq!(request(f.addr, "GET", "/api/vms", &[("Cookie", &pair)], None).status, 401);
}

#[test]
fn failed_logins_are_limited_per_address_and_per_user() {
    let f = fixture(false);
    let login = |from: &str, user: &str, pw: &str| {
        let body = json!({"user": user, "password": pw});
        request_from(f.addr, Some(from.parse().unwrap()), "POST", "/login", &[], Some(&body))
    };
    let pause = |secs: u64| std::thread::sleep(Duration::from_millis(secs * 1000 + 150));
    // Per address: 127.0.0.2 guesses a different user name each time; the
    // third failure blocks it for 1 s, and then even the right password is
    // refused without a check.
    for i in 1..=3 {
        assert_eq!(login("127.0.0.2", &format!("u{i}"), "x").status, 401, "failure {i}");
    }
    let r = login("127.0.0.2", "admin", PASSWORD);
    assert_eq!((r.status, r.header("retry-after")), (429, Some("1")));
    assert_eq!(r.json()["retry_after"], 1);
    assert!(r.header("set-cookie").is_none());
    // The user is not blocked: from elsewhere the administrator logs in.
    assert_eq!(login("127.0.0.3", "admin", PASSWORD).status, 200);
    // Each further failure doubles the block.
    pause(1);
    assert_eq!(login("127.0.0.2", "u4", "x").status, 401);
    let r = login("127.0.0.2", "u5", "x");
    assert_eq!((r.status, r.header("retry-after")), (429, Some("2")));
    // Per user: "admin" guessed from three addresses is blocked everywhere…
    for a in ["127.0.0.4", "127.0.0.5", "127.0.0.6"] {
        assert_eq!(login(a, "admin", "wrong").status, 401, "from {a}");
    }
    let r = login("127.0.0.7", "admin", PASSWORD);
    assert_eq!((r.status, r.header("retry-after")), (429, Some("1")));
    // …while another user name from that address is checked (and wrong).
    assert_eq!(login("127.0.0.7", "someone", "x").status, 401);
    // Past Retry-After the right password gets in, and the success clears
    // the user's count: two more failures do not block it yet.
    pause(1);
    let ok = login("127.0.0.7", "admin", PASSWORD);
    assert_eq!(ok.status, 200);
    for _ in 0..2 {
        assert_eq!(login("127.0.0.8", "admin", "wrong").status, 401);
    }
    assert_eq!(login("127.0.0.9", "admin", PASSWORD).status, 200);
    // The session works; the API token is never limited.
    let pair = ok.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    assert_eq!(request(f.addr, "GET", "/api/vms", &[("Cookie", &pair)], None).status, 200);
    assert_eq!(request(f.addr, "GET", "/api/vms", &[("Authorization", &bearer())], None).status, 200);
}

#[test]
fn restores_write_only_inside_allowed_destinations() {
    let f = fixture(false);
    let auth = bearer();
    let h = [("Authorization", auth.as_str())];
    let restore = |dest: &str, file: &str| {
        request(
            f.addr,
            "POST",
            "/api/restore",
            &h,
            Some(&json!({"store": "main", "version": f.version, "disk": 0, "destination": dest, "file": file})),
        )
    };
    for (dest, file) in [
        ("elsewhere", "a.img"),
        ("scratch", "../a.img"),
        ("scratch", "/tmp/a.img"),
        ("scratch", "sub/a.img"),
        ("scratch", ".."),
        ("scratch", ".profile"),
    ] {
        let a = restore(dest, file);
        assert_eq!(a.status, 400, "{dest} {file}: {}", String::from_utf8_lossy(&a.body));
    }
    assert!(!f.root.join("a.img").exists());
    assert_eq!(std::fs::read_dir(f.root.join("restores")).unwrap().count(), 0);

    let a = restore("scratch", "web.img");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["report"]["size"], 307200);
    assert_eq!(std::fs::read(f.root.join("restores/web.img")).unwrap(), f.disk);
    // An existing file is never replaced.
    std::fs::write(f.root.join("restores/keep.img"), b"mine").unwrap();
    assert_eq!(restore("scratch", "keep.img").status, 400);
    assert_eq!(std::fs::read(f.root.join("restores/keep.img")).unwrap(), b"mine");
    // A destination that became a link to elsewhere is refused.
    std::fs::remove_dir_all(f.root.join("restores")).unwrap();
    std::os::unix::fs::symlink(f.root.join("cache0"), f.root.join("restores")).unwrap();
    assert_eq!(restore("scratch", "x.img").status, 400);
    assert!(!f.root.join("cache0/x.img").exists());
}

#[test]
fn events_stream_reports_a_restore() {
    let f = fixture(false);
    let mut s = TcpStream::connect(f.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /api/events HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n", bearer()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // Wait for the stream's greeting so the subscription exists.
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.contains(": alike events") {
            break;
        }
    }
    let a = request(
        f.addr,
        "POST",
        "/api/restore",
        &[("Authorization", &bearer())],
        Some(
            &json!({"store": "main", "version": "latest", "vm": "web-01", "disk": 0, "destination": "scratch", "file": "e.img", "format": "vhdx"}),
        ),
    );
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let mut kinds = Vec::new();
    while !kinds.iter().any(|k: &String| k == "restore_finished") {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
        if let Some(k) = line.trim().strip_prefix("event: ") {
            kinds.push(k.to_string());
        }
    }
    assert_eq!(kinds.first().map(String::as_str), Some("restore_started"));
    assert!(kinds.iter().any(|k| k == "restore_progress"), "{kinds:?}");
    // The VHDX file is one qemu-img or the store reads back.
    let back = alike::open_image(f.root.join("restores/e.img"), Some(alike::ImageFormat::Vhdx)).unwrap();
    assert_eq!(back.size(), 307200);
    let _ = &f.rt;
}

#[test]
fn one_daemon_per_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d/alike.redb");
    let first = alike_serve::lock_database(&db).unwrap();
    match alike_serve::lock_database(&db) {
        Err(alike_serve::Error::AlreadyRunning { holder, .. }) => {
            assert_eq!(holder.as_deref(), Some(std::process::id().to_string().as_str()))
        }
        other => panic!("{other:?}"),
    }
    drop(first);
    alike_serve::lock_database(&db).unwrap();
    assert!(Path::new(&format!("{}.lock", db.display())).exists());
}

/// HTTPS with the configuration's certificate, checked by curl against the CA.
#[test]
fn tls_when_configured() {
    let Ok(curl) = which("curl") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL takes a leaf whose issuer is its own subject for self-signed.
    ca.distinguished_name.push(rcgen::DnType::CommonName, "alike test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "alike serve");
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let (ca_file, cert_file, key_file) =
        (dir.path().join("ca.pem"), dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let extra = format!("[serve.tls]\ncert = {:?}\nkey = {:?}\n", cert_file, key_file);
    let f = fixture_with(false, &extra);
    let url = format!("https://{}/api/session", f.addr);
    let out = std::process::Command::new(&curl)
        .args(["-sS", "--cacert"])
        .arg(&ca_file)
        .args(["-H", &format!("Authorization: {}", bearer()), &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["ok"], true);
    // Without the credential: 401 over TLS too; a session cookie is Secure.
    let out = std::process::Command::new(&curl)
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca_file)
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let out = std::process::Command::new(&curl)
        .args(["-s", "-i", "--cacert"])
        .arg(&ca_file)
        .args(["-d", &format!("{{\"user\":\"admin\",\"password\":\"{PASSWORD}\"}}")])
        .arg(format!("https://{}/login", f.addr))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.contains("set-cookie: alike_session=") && head.contains("; secure"), "{head}");
    // Plain HTTP on the TLS port gets no answer.
    let plain = request_raw(f.addr, b"GET /api/session HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(!plain.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&plain));
}

fn which(tool: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(tool)).find(|p| p.is_file()))
        .ok_or(())
}

fn request_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}
