//! The SSH client against a real OpenSSH server (`sshd -D` on a free
//! loopback port, its own host key: `alike_testing::sshd`): commands and
//! their output, host key pinning (known_hosts plain, hashed by
//! `ssh-keygen -H`, revoked; fingerprints), authentication failures,
//! timeouts, bounds, and the processor protocol's refusals with scripted
//! workers.

use std::process::Command;
use std::time::{Duration, Instant};

use alike_remote::protocol::{JobSpec, Secret, Secrets};
use alike_remote::ssh::{
    ClientKey, Host, HostKeyPolicy, JobOptions, Output, RemoteError, Session, SshOptions, run_job,
};
use alike_testing::sshd::{Sshd, keygen};

fn host(s: &Sshd) -> Host {
    Host::new(&s.user, &s.address, s.port).unwrap()
}

fn connect(s: &Sshd) -> Session {
    Session::connect(
        &host(s),
        &HostKeyPolicy::known_hosts(&s.known_hosts),
        &ClientKey::new(&s.client_key),
        &SshOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}\nsshd log: {}", s.log_text()))
}

/// Every line and the end of a command.
fn collect(session: &Session, cmd: &str) -> (Vec<String>, Output, String) {
    let p = session.exec(cmd).unwrap();
    let mut lines = Vec::new();
    loop {
        match p.recv(Duration::from_secs(10)).unwrap().expect("output within 10 s") {
            Output::Line(l) => lines.push(String::from_utf8(l).unwrap()),
            end => return (lines, end, p.stderr_tail()),
        }
    }
}

#[test]
fn runs_a_command_and_reads_its_lines_status_and_stderr() {
    let Some(s) = Sshd::start() else { return };
    let session = connect(&s);
    assert_eq!(session.host_key_fingerprint(), s.host_fingerprint);
    let (lines, end, err) = collect(&session, "printf 'one\\ntwo\\r\\n\\nthree'; echo oops >&2; exit 3");
    assert_eq!(lines, ["one", "two"], "an unterminated last line is not a line");
    assert_eq!(end, Output::Closed { status: Some(3), signal: None });
    assert_eq!(err, "oops");
    // Standard input: `cat` echoes a line back, and ends when the channel closes.
    let p = session.exec("cat").unwrap();
    p.send(b"hello\n").unwrap();
    assert_eq!(p.recv(Duration::from_secs(10)).unwrap(), Some(Output::Line(b"hello".to_vec())));
    p.close();
    drop(p);
    // Several commands on one session.
    let (lines, _, _) = collect(&session, "echo again");
    assert_eq!(lines, ["again"]);
    session.close();
}

#[test]
fn a_line_longer_than_the_bound_is_refused() {
    let Some(s) = Sshd::start() else { return };
    let session = Session::connect(
        &host(&s),
        &HostKeyPolicy::known_hosts(&s.known_hosts),
        &ClientKey::new(&s.client_key),
        &SshOptions::default().max_line(1024),
    )
    .unwrap();
    let p = session.exec("head -c 1000 /dev/zero | tr '\\0' a; echo; head -c 5000 /dev/zero | tr '\\0' b").unwrap();
    assert!(matches!(p.recv(Duration::from_secs(10)).unwrap(), Some(Output::Line(l)) if l.len() == 1000));
    let e = p.recv(Duration::from_secs(10)).unwrap_err();
    assert!(e.to_string().contains("a line of more than 1024 bytes from the processor"), "{e}");
}

#[test]
fn host_keys_are_pinned_unknown_changed_and_revoked_keys_are_refused() {
    let Some(s) = Sshd::start() else { return };
    let d = s.dir();
    let other = keygen(&d.join("other_host"), "");
    let other_fp = alike_testing::sshd::fingerprint_of(&d.join("other_host.pub"));
    let try_with = |policy: &HostKeyPolicy| {
        Session::connect(&host(&s), policy, &ClientKey::new(&s.client_key), &SshOptions::default())
            .map(|_| ())
            .map_err(Box::new)
    };
    let pattern = format!("[{}]:{}", s.address, s.port);

    // Unknown: the file pins keys for other hosts only (and the right key on port 22).
    let kh = d.join("kh-unknown");
    std::fs::write(&kh, format!("otherhost {}\n{} {}\n", s.host_key, s.address, s.host_key)).unwrap();
    let e = try_with(&HostKeyPolicy::known_hosts(&kh)).unwrap_err();
    assert!(matches!(*e, RemoteError::HostKeyUnknown { .. }), "{e}");
    assert_eq!(e.code(), Some("HOST_KEY_UNKNOWN"));
    let msg = e.to_string();
    for part in [&format!("{} port {}", s.address, s.port), &s.host_fingerprint, &kh.display().to_string()] {
        assert!(msg.contains(part.as_str()), "{msg} does not name {part}");
    }

    // Changed: another key pinned for this host and port; both fingerprints named.
    let kh = d.join("kh-changed");
    std::fs::write(&kh, format!("{pattern} {other}\n")).unwrap();
    let e = try_with(&HostKeyPolicy::known_hosts(&kh)).unwrap_err();
    assert!(matches!(*e, RemoteError::HostKeyChanged { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&s.host_fingerprint) && msg.contains(&other_fp), "{msg}");
    assert!(msg.contains(&format!("port {}", s.port)), "{msg}");

    // Revoked, even though it is also pinned.
    let kh = d.join("kh-revoked");
    std::fs::write(&kh, format!("{pattern} {}\n@revoked * {}\n", s.host_key, s.host_key)).unwrap();
    let e = try_with(&HostKeyPolicy::known_hosts(&kh)).unwrap_err();
    assert!(matches!(*e, RemoteError::HostKeyRevoked { .. }), "{e}");

    // A file hashed by OpenSSH itself still pins the key.
    let kh = d.join("kh-hashed");
    std::fs::write(&kh, format!("# c\n{pattern},other {}\n", s.host_key)).unwrap();
    let out = Command::new("ssh-keygen").arg("-H").arg("-f").arg(&kh).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(text.contains("|1|") && !text.contains(&s.address), "{text}");
    try_with(&HostKeyPolicy::known_hosts(&kh)).unwrap();

    // Fingerprints: the right one passes, another one is refused naming both.
    try_with(&HostKeyPolicy::fingerprints([&other_fp, &s.host_fingerprint]).unwrap()).unwrap();
    let e = try_with(&HostKeyPolicy::fingerprints([&other_fp]).unwrap()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&s.host_fingerprint) && msg.contains(&other_fp), "{msg}");

    // A missing known_hosts file is an error that names it, not an unknown host.
    let e = try_with(&HostKeyPolicy::known_hosts(d.join("nope"))).unwrap_err();
    assert!(matches!(*e, RemoteError::KnownHosts { .. }) && e.to_string().contains("nope"), "{e}");
}

#[test]
fn authentication_failures_are_clear() {
    let Some(s) = Sshd::start() else { return };
    let d = s.dir();
    let policy = HostKeyPolicy::known_hosts(&s.known_hosts);
    keygen(&d.join("stranger"), "");
    let e =
        Session::connect(&host(&s), &policy, &ClientKey::new(d.join("stranger")), &SshOptions::default()).unwrap_err();
    assert!(matches!(e, RemoteError::AuthFailed { .. }), "{e}");
    assert_eq!(e.code(), Some("AUTH_FAILED"));
    let fp = alike_testing::sshd::fingerprint_of(&d.join("stranger.pub"));
    let msg = e.to_string();
    assert!(msg.contains(&format!("user {:?}", s.user)) && msg.contains(&fp) && msg.contains("PublicKey"), "{msg}");

    // A passphrase-protected key: works with its passphrase file, says why without one.
    let public = keygen(&d.join("locked"), "open sesame");
    let ak = std::fs::read_to_string(d.join("authorized_keys")).unwrap();
    std::fs::write(d.join("authorized_keys"), format!("{ak}{public}\n")).unwrap();
    std::fs::write(d.join("pass"), "open sesame\n").unwrap();
    let key = ClientKey::new(d.join("locked")).with_passphrase_file(&d.join("pass")).unwrap();
    Session::connect(&host(&s), &policy, &key, &SshOptions::default()).unwrap().close();
    let e =
        Session::connect(&host(&s), &policy, &ClientKey::new(d.join("locked")), &SshOptions::default()).unwrap_err();
    assert!(e.to_string().contains("the key is encrypted"), "{e}");
    let wrong = ClientKey::new(d.join("locked")).with_passphrase(Secret::new("open sesame!"));
    let e = Session::connect(&host(&s), &policy, &wrong, &SshOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("cannot decrypt") && !msg.contains("sesame"), "{msg}");
}

#[test]
fn a_host_that_never_answers_times_out_and_a_closed_port_is_refused() {
    // Accepts TCP connections and says nothing (no SSH banner).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let h = Host::new("root", "127.0.0.1", port).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    if alike_testing::sshd::unavailable().is_some() {
        alike_testing::skip("ssh-keygen is missing");
        return;
    }
    keygen(&key, "");
    let policy = HostKeyPolicy::known_hosts(dir.path().join("kh"));
    let t0 = Instant::now();
    let opts = SshOptions::default().handshake_timeout(Duration::from_millis(700));
    let e = Session::connect(&h, &policy, &ClientKey::new(&key), &opts).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(matches!(e, RemoteError::Timeout { what: "SSH handshake", .. }), "{e}");
    assert_eq!(e.code(), Some("TIMEOUT"));
    assert!(
        e.to_string().contains(&format!("127.0.0.1 port {port}: SSH handshake did not finish within 700ms")),
        "{e}"
    );
    drop(silent);
    let e = Session::connect(&h, &policy, &ClientKey::new(&key), &opts).unwrap_err();
    assert!(matches!(e, RemoteError::Connect { .. }), "{e}");
    assert!(e.to_string().contains(&format!("cannot connect to 127.0.0.1 port {port}")), "{e}");
}

/// A job with a secret, for scripted workers.
fn spec() -> JobSpec {
    let mut secrets = Secrets::new();
    secrets.insert("passphrase", Secret::new("never-sent-1f3a"));
    JobSpec::new("j1", "backup", serde_json::json!({})).with_secrets(secrets)
}

#[test]
fn a_worker_of_another_version_never_receives_the_job() {
    let Some(s) = Sshd::start() else { return };
    let session = connect(&s);
    let got = s.dir().join("received");
    let cmd = format!(
        "echo '{{\"type\":\"hello\",\"v\":2,\"processor\":\"alike 9\",\"kinds\":[\"backup\"]}}'; cat > {}",
        got.display()
    );
    let e =
        run_job(&session, spec(), &JobOptions::default().command(cmd), &Default::default(), &mut |_| {}).unwrap_err();
    assert_eq!(e.code(), Some("PROTOCOL_VERSION"));
    assert!(e.to_string().contains("speaks processor protocol v2, this orchestrator speaks v1"), "{e}");
    // The worker's input was closed without a byte of the job.
    let t0 = Instant::now();
    while !got.exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::read(&got).unwrap(), b"");
}

#[test]
fn a_scripted_worker_runs_a_job_through_events_to_its_result() {
    let Some(s) = Sshd::start() else { return };
    let session = connect(&s);
    let got = s.dir().join("job");
    let lines = [
        r#"{"type":"hello","v":1,"processor":"script","kinds":["backup"]}"#,
        r#"{"type":"started","job":"j1","kind":"backup","pid":1}"#,
        r#"{"type":"progress","phase":"backup","bytes_done":5,"bytes_total":10,"disks":[{"disk":0,"bytes_done":5,"bytes_total":10}]}"#,
        r#"{"type":"done","result":{"version":"abc"}}"#,
    ];
    // Says hello, reads the job line, then reports.
    let cmd = format!(
        "echo '{}'; head -n 1 > {}; echo '{}'; echo '{}'; echo '{}'",
        lines[0],
        got.display(),
        lines[1],
        lines[2],
        lines[3]
    );
    let mut events = Vec::new();
    let r = run_job(&session, spec(), &JobOptions::default().command(cmd), &Default::default(), &mut |e| {
        events.push(e.type_name())
    })
    .unwrap();
    assert_eq!(r, serde_json::json!({"version": "abc"}));
    assert_eq!(events, ["started", "progress"]);
    let job = std::fs::read_to_string(&got).unwrap();
    assert!(job.starts_with(r#"{"type":"job","v":1,"id":"j1","kind":"backup""#), "{job}");
    assert!(job.contains("never-sent-1f3a"), "the secret travels in the job line");

    // A worker that fails: its kind, retry class and message come back.
    let cmd = format!(
        "echo '{}'; head -n 1 >/dev/null; echo '{}'",
        lines[0],
        r#"{"type":"failed","error":{"kind":"wrong_passphrase","message":"the passphrase does not unlock the store","retry":"permanent"}}"#
    );
    let e =
        run_job(&session, spec(), &JobOptions::default().command(cmd), &Default::default(), &mut |_| {}).unwrap_err();
    assert_eq!(e.kind(), alike_core::ErrorKind::WrongPassphrase);
    assert_eq!(e.retry(), alike_core::Retry::Permanent);
    assert!(e.to_string().contains("backup job j1 on") && e.to_string().contains("does not unlock"), "{e}");

    // A command that is not there.
    let e = run_job(
        &session,
        spec(),
        &JobOptions::default().command("/nonexistent/alike processor"),
        &Default::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(e.code(), Some("PROCESSOR_EXITED"));
    assert!(
        e.to_string().contains("exit status 127: command not found") && e.to_string().contains("No such file"),
        "{e}"
    );

    // A command that never says hello.
    let t0 = Instant::now();
    let e = run_job(
        &session,
        spec(),
        &JobOptions::default().command("sleep 30").hello_timeout(Duration::from_millis(500)),
        &Default::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, RemoteError::Timeout { .. }) && t0.elapsed() < Duration::from_secs(5), "{e}");
}

#[test]
fn local_processors_in_network_namespaces_are_hosts_of_their_own() {
    let Some(mut net) = alike_testing::netns::ProcessorNet::new() else { return };
    net.add_processor();
    net.add_processor();
    let names: Vec<String> = net.processors().iter().map(|p| p.netns.clone()).collect();
    let [a, b] = net.processors() else { unreachable!() };
    assert_ne!(a.address, b.address);
    for p in [a, b] {
        let session = connect(&p.sshd);
        // The command runs inside the namespace: it sees only its own address.
        let (lines, end, _) = collect(&session, "ip -o -4 addr show dev eth0 | awk '{print $4}'");
        assert_eq!(lines, [format!("{}/24", p.address)]);
        assert_eq!(end, Output::Closed { status: Some(0), signal: None });
        session.close();
    }
    // One namespace reaches the other's SSH port across the bridge.
    let session = connect(&a.sshd);
    let (lines, _, err) = collect(&session, &format!("exec 3<>/dev/tcp/{}/22; head -c 7 <&3; echo", b.address));
    assert_eq!(lines, ["SSH-2.0"], "{err}");
    session.close();
    drop(net);
    let left = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    for n in names {
        assert!(!left.contains(&n), "{n} left behind: {left}");
    }
}
