//! The `alike-xapi-sim` binary as a child process, shared by the CLI tests
//! that drive a simulated pool (`xen.rs`, `xen_replica.rs`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub(crate) fn sim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ALIKE_XAPI_SIM") {
        return p.into();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_alike")).with_file_name("alike-xapi-sim");
    // Build it (a no-op when fresh): `cargo test -p alike-cli` alone does not.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let profile = if bin.parent().is_some_and(|d| d.ends_with("release")) { vec!["--release"] } else { vec![] };
    let st = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "alike-xen-sim", "--bin", "alike-xapi-sim", "--manifest-path"])
        .arg(&manifest)
        .args(&profile)
        .status()
        .expect("running cargo to build alike-xapi-sim");
    assert!(st.success(), "building alike-xapi-sim failed");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

pub(crate) struct Sim {
    pub(crate) child: Child,
    pub(crate) url: String,
    pub(crate) addr: String,
}

impl Sim {
    pub(crate) fn start(state: &Path) -> Sim {
        let mut child = Command::new(sim_binary())
            .args(["--listen", "127.0.0.1:0", "--demo", "--state"])
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut first = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut first).unwrap();
        // Keep reading what it prints (it dies on a closed stdout).
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let url = first.split_whitespace().last().unwrap().to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{first}");
        let addr = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
        Sim { child, url, addr }
    }

    /// The simulator's test API: the guest writes `body` at `offset` of a VDI (marks CBT).
    pub(crate) fn guest_write(&self, vdi: &str, offset: u64, body: &[u8]) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        let head = format!(
            "PUT /sim/write?vdi={vdi}&offset={offset} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }

    pub(crate) fn post(&self, target: &str) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        let head =
            format!("POST {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", self.addr);
        s.write_all(head.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
