//! NBD export over TLS (`NbdOptions::tls`), proven by clients nobody here
//! wrote, both on GnuTLS: nbdinfo (libnbd, `nbds://…?tls-certificates=DIR`)
//! and qemu-img (`tls-creds-x509`). Certificates are made at test time
//! (rcgen). A client without TLS is refused, a client that trusts another
//! CA fails, and with a client CA only clients with a certificate it signed
//! get in.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alike::{CancelToken, ErrorKind, NbdListening, NbdOptions, Store, Version};

use super::util::Env;

const MIB: usize = 1 << 20;

struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca { issuer: rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap() }
    }

    /// A certificate this CA signs: (certificate PEM, key PEM).
    fn sign(&self, names: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("alike test client"));
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client credentials folder as libnbd and qemu read it: the CA it
    /// trusts (`ca-cert.pem`) and optionally its own certificate, signed by
    /// `client_cert` (whose CA is added to `ca-cert.pem`: qemu checks its
    /// own certificate against that file too).
    fn client_dir(&self, dir: &Path, client_cert: Option<&Ca>) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let mut cas = self.issuer.pem();
        if let Some(signer) = client_cert {
            cas.push_str(&signer.issuer.pem());
        }
        std::fs::write(dir.join("ca-cert.pem"), cas).unwrap();
        if let Some(signer) = client_cert {
            let (cert, key) = signer.sign(&["alike test client"], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
            std::fs::write(dir.join("client-cert.pem"), cert).unwrap();
            std::fs::write(dir.join("client-key.pem"), key).unwrap();
        }
        dir.to_path_buf()
    }
}

/// The server's files: (certificate, key).
fn server_files(env: &Env, ca: &Ca) -> (PathBuf, PathBuf) {
    let (cert, key) = ca.sign(&["localhost", "127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (c, k) = (env.path("server-cert.pem"), env.path("server-key.pem"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

/// [`super::nbd::serving`], the session expected to end well.
fn serving<T>(store: &Store, v: &Version, opts: NbdOptions, f: impl FnOnce(&NbdListening) -> T) -> T {
    let (r, report) = super::nbd::serving(store, v, opts, f);
    report.unwrap();
    r
}

fn port(l: &NbdListening) -> String {
    l.uri.rsplit(':').next().unwrap().to_string()
}

fn out(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `nbdinfo --size` over TLS with the credentials in `creds`.
fn nbdinfo(l: &NbdListening, creds: &Path) -> Output {
    let uri = format!("nbds://127.0.0.1:{}/disk0?tls-certificates={}", port(l), creds.display());
    out(Command::new("nbdinfo").arg("--size").arg(uri))
}

/// `qemu-img convert` over TLS with the credentials in `creds` into `to`.
fn qemu_convert(l: &NbdListening, creds: &Path, to: &Path) -> Output {
    out(Command::new("qemu-img")
        .arg("convert")
        .arg("--object")
        .arg(format!("tls-creds-x509,id=tls0,dir={},endpoint=client", creds.display()))
        .arg("--image-opts")
        .arg(format!("driver=nbd,host=127.0.0.1,port={},export=disk0,tls-creds=tls0", port(l)))
        .args(["-O", "raw"])
        .arg(to))
}

fn backed_up(env: &Env) -> (Store, Version, Vec<u8>) {
    let store = env.create(true);
    let mut data = vec![0u8; 12 * MIB];
    alike_testing::Rng::new(31).fill(&mut data[..3 * MIB]);
    alike_testing::Rng::new(32).fill(&mut data[8 * MIB..8 * MIB + 100_000]);
    let img = env.path("disk.img");
    std::fs::write(&img, &data).unwrap();
    let v = store.backup_images("vm", &[&img], &Default::default()).unwrap().version;
    (store, v, data)
}

#[test]
fn real_clients_read_over_tls_and_others_are_refused() {
    if !["nbdinfo", "qemu-img"].iter().all(|t| alike_testing::require_tool(t)) {
        return;
    }
    let env = Env::new();
    let (store, v, data) = backed_up(&env);
    let ca = Ca::new("alike test CA");
    let other = Ca::new("another CA");
    let (cert, key) = server_files(&env, &ca);
    let good = ca.client_dir(&env.path("good"), None);
    let wrong = other.client_dir(&env.path("wrong"), None);
    let opts = NbdOptions::default().listen_tcp("127.0.0.1:0").tls(&cert, &key);
    serving(&store, &v, opts, |l| {
        assert!(l.uri.starts_with("nbds://127.0.0.1:"), "{l:?}");
        assert!(l.exports[0].uri.starts_with("nbds://") && l.exports[0].uri.ends_with("/disk0"), "{l:?}");

        let o = nbdinfo(l, &good);
        assert!(o.status.success(), "nbdinfo over TLS: {}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), data.len().to_string());
        let to = env.path("convert.raw");
        let o = qemu_convert(l, &good, &to);
        assert!(o.status.success(), "qemu-img convert over TLS: {}", text(&o));
        assert!(std::fs::read(&to).unwrap() == data, "qemu-img convert over TLS: the bytes differ");

        // Without TLS: every option but STARTTLS is refused (TLS_REQD).
        let plain = format!("nbd://127.0.0.1:{}/disk0", port(l));
        let o = out(Command::new("nbdinfo").arg("--size").arg(&plain));
        assert!(!o.status.success(), "nbdinfo without TLS got in: {}", text(&o));
        assert!(text(&o).to_lowercase().contains("tls"), "{}", text(&o));
        let o = out(Command::new("qemu-img").args(["info", "-f", "raw"]).arg(&plain));
        assert!(!o.status.success(), "qemu-img without TLS got in: {}", text(&o));
        assert!(text(&o).contains("TLS"), "{}", text(&o));

        // Trusting another CA: the server's certificate does not verify.
        let o = nbdinfo(l, &wrong);
        assert!(!o.status.success(), "nbdinfo trusting another CA got in: {}", text(&o));
        let o = qemu_convert(l, &wrong, &env.path("wrong.raw"));
        assert!(!o.status.success(), "qemu-img trusting another CA got in: {}", text(&o));

        // The server is still well after all that.
        let o = nbdinfo(l, &good);
        assert!(o.status.success(), "nbdinfo over TLS, again: {}", text(&o));
    });
}

#[test]
fn with_a_client_ca_only_its_clients_get_in() {
    if !["nbdinfo", "qemu-img"].iter().all(|t| alike_testing::require_tool(t)) {
        return;
    }
    let env = Env::new();
    let (store, v, data) = backed_up(&env);
    let ca = Ca::new("alike test CA");
    let clients = Ca::new("alike clients CA");
    let other = Ca::new("another CA");
    let (cert, key) = server_files(&env, &ca);
    let client_ca = env.path("clients-ca.pem");
    std::fs::write(&client_ca, clients.issuer.pem()).unwrap();
    let signed = ca.client_dir(&env.path("signed"), Some(&clients));
    let anonymous = ca.client_dir(&env.path("anonymous"), None);
    let stranger = ca.client_dir(&env.path("stranger"), Some(&other));
    let opts = NbdOptions::default().listen_tcp("127.0.0.1:0").tls(&cert, &key).tls_client_ca(&client_ca);
    serving(&store, &v, opts, |l| {
        let o = nbdinfo(l, &signed);
        assert!(o.status.success(), "a client the CA signed: {}", text(&o));
        let to = env.path("convert.raw");
        let o = qemu_convert(l, &signed, &to);
        assert!(o.status.success(), "qemu-img with a client certificate: {}", text(&o));
        assert!(std::fs::read(&to).unwrap() == data);
        let o = nbdinfo(l, &anonymous);
        assert!(!o.status.success(), "a client without a certificate got in: {}", text(&o));
        let o = nbdinfo(l, &stranger);
        assert!(!o.status.success(), "a client another CA signed got in: {}", text(&o));
        let o = qemu_convert(l, &stranger, &env.path("stranger.raw"));
        assert!(!o.status.success(), "qemu-img with another CA's certificate got in: {}", text(&o));
    });
}

#[test]
fn tls_files_that_do_not_serve_are_refused_before_listening() {
    let env = Env::new();
    let (store, v, _) = backed_up(&env);
    let ca = Ca::new("alike test CA");
    let (cert, key) = server_files(&env, &ca);
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_body: String = key_pem.lines().nth(1).unwrap().chars().take(24).collect();
    let (other_cert, _) = ca.sign(&["localhost"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let mismatched = env.path("other-cert.pem");
    std::fs::write(&mismatched, other_cert).unwrap();
    let garbage = env.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    // Stopped before it starts: a case that wrongly served would return at once.
    let stopped = CancelToken::new();
    stopped.cancel();
    let base = || {
        NbdOptions::default()
            .listen_tcp("127.0.0.1:0")
            .cancel_token(stopped.clone())
            .on_listening(|_| panic!("it listened"))
    };
    for (name, opts, kind, want) in [
        ("missing key", base().tls(&cert, env.path("nope.pem")), ErrorKind::Io, "nope.pem"),
        ("no certificate", base().tls(&garbage, &key), ErrorKind::InvalidArgument, "no PEM certificate"),
        ("the key is not a key", base().tls(&cert, &cert), ErrorKind::InvalidArgument, "no PEM private key"),
        ("key of another certificate", base().tls(&mismatched, &key), ErrorKind::InvalidArgument, "does not go with"),
        ("client CA without TLS", base().tls_client_ca(&cert), ErrorKind::InvalidArgument, "client CA needs TLS"),
        ("bad client CA", base().tls(&cert, &key).tls_client_ca(&garbage), ErrorKind::InvalidArgument, "garbage.pem"),
    ] {
        let e = store.serve_nbd(&v, &opts).err().unwrap_or_else(|| panic!("{name}: served"));
        assert_eq!(e.kind(), kind, "{name}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(!msg.contains(&key_body), "{name}: the error shows the key: {msg}");
    }
}
