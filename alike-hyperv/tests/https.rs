//! WS-Management over HTTPS (WinRM's 5986 listener) against the simulator
//! serving TLS: NTLM and Basic inside TLS, the certificate pinned by its
//! SHA-256 fingerprint or trusted through a CA file; a wrong pin, a
//! certificate the CA file does not vouch for, HTTPS without a check and
//! Basic over plain HTTP are refused.
#![allow(missing_docs)]

use alike_hyperv::Error;
use alike_hyperv::wsman::tls::ServerCertCheck;
use alike_hyperv::wsman::{Client, ConnectOptions};
use alike_hyperv_sim::{SimConfig, Simulator};

const USER: &str = "hvadmin";
const PASSWORD: &str = "S3cret!&<x>";

fn vms(c: &Client) -> usize {
    c.query("SELECT * FROM Msvm_ComputerSystem WHERE Caption = 'Virtual Machine'").unwrap().len()
}

#[test]
fn ntlm_and_basic_over_tls_with_a_pinned_certificate_or_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::new(dir.path()).demo(true).credentials(USER, PASSWORD).tls(true)).unwrap();
    let url = sim.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let pin = ServerCertCheck::pin(sim.tls_fingerprint().unwrap()).unwrap();

    // NTLM on the connection, SOAP in clear inside TLS.
    let mut o = ConnectOptions::new(&url, USER, PASSWORD);
    o.server_cert(pin.clone());
    let c = Client::connect(&o).unwrap();
    assert_eq!(vms(&c), 2);
    assert_eq!(vms(&c), 2, "the connection is kept");

    // Basic on every request.
    o.basic(true);
    assert_eq!(vms(&Client::connect(&o).unwrap()), 2);
    let mut wrong_pw = ConnectOptions::new(&url, USER, "nope");
    wrong_pw.server_cert(pin.clone()).basic(true);
    assert!(matches!(Client::connect(&wrong_pw).unwrap_err(), Error::AuthenticationFailed { .. }));

    // The certificate as a CA file (it names 127.0.0.1).
    let mut ca = ConnectOptions::new(&url, USER, PASSWORD);
    ca.server_cert(ServerCertCheck::CaPem(sim.tls_cert_pem().unwrap().to_owned()));
    assert_eq!(vms(&Client::connect(&ca).unwrap()), 2);

    // A wrong pin is refused, naming the certificate's real fingerprint.
    let mut bad = ConnectOptions::new(&url, USER, PASSWORD);
    bad.server_cert(ServerCertCheck::pin(&"AB".repeat(32)).unwrap());
    match Client::connect(&bad).unwrap_err() {
        Error::Certificate { fingerprint, .. } => assert_eq!(fingerprint, sim.tls_fingerprint().unwrap()),
        e => panic!("{e}"),
    }
    // Another certificate as the CA: refused too.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Simulator::start(SimConfig::new(other_dir.path()).tls(true)).unwrap();
    let mut bad = ConnectOptions::new(&url, USER, PASSWORD);
    bad.server_cert(ServerCertCheck::CaPem(other.tls_cert_pem().unwrap().to_owned()));
    assert!(matches!(Client::connect(&bad).unwrap_err(), Error::Certificate { .. }));

    // HTTPS without a check, Basic over HTTP, a check over HTTP: refused before connecting.
    let e = Client::connect(&ConnectOptions::new(&url, USER, PASSWORD)).unwrap_err();
    assert!(e.to_string().contains("pinned"), "{e}");
    let plain = url.replace("https://", "http://");
    let mut b = ConnectOptions::new(&plain, USER, PASSWORD);
    b.basic(true);
    assert!(Client::connect(&b).unwrap_err().to_string().contains("in clear"));
    let mut b = ConnectOptions::new(&plain, USER, PASSWORD);
    b.server_cert(pin);
    assert!(Client::connect(&b).unwrap_err().to_string().contains("https://"));
}
