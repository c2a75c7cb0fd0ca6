//! The NBD client against `qemu-nbd` as the real server, on loopback:
//! `NBD_OPT_GO` (structured replies, holes) and `NBD_OPT_EXPORT_NAME`
//! (simple replies, XAPI's path), reads byte-exact at random offsets, large
//! pipelined reads, STARTTLS with a pinned fingerprint (right and wrong) and
//! with a CA certificate, a missing export, the server dying mid-read, and
//! a 256 MiB disk through the `DiskSource` against a direct read.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use alike_core::DiskSource;
use alike_testing::Rng;
use alike_xen::Error;
use alike_xen::nbd::proto::ProtoError;
use alike_xen::nbd::{NbdBuilder, ServerCertCheck, format_fingerprint, sha256};
use alike_xen::xapi::NbdInfo;

const MIB: u64 = 1 << 20;

/// A `qemu-nbd` serving one file read-only on a loopback port; killed (by
/// its pid) on drop.
struct QemuNbd {
    port: u16,
    pid: u32,
    _dir: tempfile::TempDir,
}

impl QemuNbd {
    fn start(file: &Path, export: &str, tls_dir: Option<&Path>) -> QemuNbd {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // A port the kernel just handed out is free; qemu-nbd binds it next.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["--fork", "--persistent", "--shared=16", "-r", "-f", "raw", "-b", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-x", export, "--pid-file"])
            .arg(&pid_file);
        if let Some(d) = tls_dir {
            let obj = format!("tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off", d.display());
            cmd.args(["--object", &obj, "--tls-creds", "tls0"]);
        }
        let out = cmd.arg(file).output().expect("qemu-nbd runs (package qemu-utils)");
        assert!(out.status.success(), "qemu-nbd failed: {}", String::from_utf8_lossy(&out.stderr));
        let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        QemuNbd { port, pid, _dir: dir }
    }

    fn kill(&self) {
        let _ = Command::new("kill").args(["-9", &self.pid.to_string()]).status();
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A sparse raw image: random extents (some unaligned) and data in the
/// first and last bytes, everything else holes.
fn image(dir: &Path, size: u64, seed: u64) -> PathBuf {
    let path = dir.join(format!("disk-{seed}.raw"));
    alike_testing::sparse_image(&path, size, 40, seed);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"first bytes", 0).unwrap();
    f.write_all_at(b"last bytes", size - 10).unwrap();
    path
}

fn check_reads(b: &NbdBuilder, data: &[u8], seed: u64) {
    let mut c = b.connect().unwrap();
    assert_eq!(c.size(), data.len() as u64);
    let mut rng = Rng::new(seed);
    let size = data.len() as u64;
    // Random offsets and lengths, many unaligned.
    for _ in 0..300 {
        let len = 1 + rng.below(300_000).min(size - 1);
        let off = rng.below(size - len + 1);
        let mut buf = vec![0xAAu8; len as usize];
        c.read_at(off, &mut buf).unwrap();
        assert!(buf == data[off as usize..(off + len) as usize], "read of {len} at {off} differs");
    }
    // A large read (pipelined: 2 MiB requests, 8 in flight) spanning holes and data.
    let big = (40 * MIB).min(size - 4 * MIB);
    let mut buf = vec![0xAAu8; big as usize];
    c.read_at(3 * MIB + 512, &mut buf).unwrap();
    assert!(buf == data[(3 * MIB + 512) as usize..(3 * MIB + 512 + big) as usize]);
    // The tail, unaligned, to the last byte.
    let mut tail = vec![0u8; 777];
    c.read_at(size - 777, &mut tail).unwrap();
    assert_eq!(&tail[..], &data[data.len() - 777..]);
    // Past the end: refused before anything is sent, the connection still usable.
    let e = c.read_at(size - 10, &mut [0u8; 11]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    c.read_at(0, &mut [0u8; 11]).unwrap();
    c.disconnect().unwrap();
}

#[test]
fn go_and_export_name_read_the_file_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB + 4096;
    let path = image(dir.path(), size, 1);
    let data = std::fs::read(&path).unwrap();
    let srv = QemuNbd::start(&path, "disk", None);

    // NBD_OPT_GO with structured replies (qemu sends holes as holes).
    let b = NbdBuilder::new("127.0.0.1", srv.port, "disk");
    let c = b.connect().unwrap();
    let info = c.info().clone();
    assert!(info.via_go && info.structured_replies && !info.tls, "{info:?}");
    assert!(info.block_size.is_some(), "qemu-nbd advertises block sizes: {info:?}");
    assert_eq!(info.flags & 2, 2, "read-only export");
    drop(c);
    check_reads(&b, &data, 11);

    // XAPI's path: NBD_OPT_EXPORT_NAME and simple replies.
    let mut b = NbdBuilder::new("127.0.0.1", srv.port, "disk");
    b.go(false).structured_replies(false).max_request(1 << 20).max_in_flight(3);
    let c = b.connect().unwrap();
    assert!(!c.info().via_go && !c.info().structured_replies);
    drop(c);
    check_reads(&b, &data, 12);

    // Structured replies with NBD_OPT_EXPORT_NAME.
    let mut b = NbdBuilder::new("127.0.0.1", srv.port, "disk");
    b.go(false);
    check_reads(&b, &data, 13);
}

#[test]
fn missing_export_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), 4 * MIB, 2);
    let srv = QemuNbd::start(&path, "disk", None);
    for go in [true, false] {
        let mut b = NbdBuilder::new("127.0.0.1", srv.port, "nope?session_id=OpaqueRef:secret");
        b.go(go);
        let e = b.connect().unwrap_err();
        let text = e.to_string();
        match &e {
            Error::Nbd { error: ProtoError::ExportNotFound { export, .. }, .. } => {
                assert_eq!(export, "nope?session_id=…");
            }
            other => panic!("go={go}: expected ExportNotFound, got {other:?}"),
        }
        assert!(text.contains("not found") && !text.contains("secret"), "go={go}: {text}");
        eprintln!("go={go}: {text}");
    }
    // Nobody listening: a connection error naming the server.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = NbdBuilder::new("127.0.0.1", port, "disk").connect().unwrap_err();
    assert!(matches!(e, Error::Connection { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}: connecting")), "{e}");
}

/// Writes qemu's TLS credentials: a CA and a `localhost` server certificate
/// it signed. Returns (CA PEM, server certificate PEM).
fn tls_creds(dir: &Path) -> (String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "alike test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server-cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
    (ca.pem(), cert.pem())
}

#[test]
fn starttls_with_pinned_and_ca_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let path = image(dir.path(), size, 3);
    let data = std::fs::read(&path).unwrap();
    let creds = dir.path().join("tls");
    std::fs::create_dir(&creds).unwrap();
    let (ca_pem, pem) = tls_creds(&creds);
    let srv = QemuNbd::start(&path, "disk", Some(&creds));

    // The right pin.
    let mut b = NbdBuilder::new("127.0.0.1", srv.port, "disk");
    b.tls(ServerCertCheck::pin_pem(&pem).unwrap());
    let c = b.connect().unwrap();
    assert!(c.info().tls);
    drop(c);
    check_reads(&b, &data, 31);

    // Verified against the CA, with the name the certificate carries (as SNI).
    let mut b = NbdBuilder::new("127.0.0.1", srv.port, "disk");
    b.tls(ServerCertCheck::CaPem(ca_pem.clone())).tls_server_name("localhost").go(false).structured_replies(false);
    let mut c = b.connect().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    c.read_at(size - (1 << 20), &mut buf).unwrap();
    assert!(buf == data[data.len() - (1 << 20)..]);

    // A wrong pin: refused, and the error shows both fingerprints.
    let wrong = [7u8; 32];
    let mut b = NbdBuilder::new("127.0.0.1", srv.port, "disk");
    b.tls(ServerCertCheck::Sha256(vec![wrong]));
    let e = b.connect().unwrap_err();
    let der = alike_xen::nbd::pem_certs(&pem).unwrap().remove(0);
    match &e {
        Error::CertificateMismatch { expected, found, .. } => {
            assert_eq!(expected, &vec![format_fingerprint(&wrong)]);
            assert_eq!(found, &format_fingerprint(&sha256(&der)));
        }
        other => panic!("expected CertificateMismatch, got {other:?}"),
    }
    eprintln!("{e}");

    // A CA that did not sign the server's certificate.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let mut b = NbdBuilder::new("127.0.0.1", srv.port, "disk");
    b.tls(ServerCertCheck::CaPem(other.cert.pem())).tls_server_name("localhost");
    let e = b.connect().unwrap_err();
    match &e {
        Error::CertificateUntrusted { fingerprint, .. } => {
            assert_eq!(fingerprint.as_deref(), Some(format_fingerprint(&sha256(&der)).as_str()));
        }
        other => panic!("expected CertificateUntrusted, got {other:?}"),
    }
    assert!(e.to_string().contains("not trusted"), "{e}");

    // XAPI's path end to end: `VDI.get_nbd_info`'s record (the host's
    // certificate pinned, its subject as SNI, STARTTLS then EXPORT_NAME and
    // simple replies) opened as a pooled DiskSource.
    let info: NbdInfo = serde_json::from_value(serde_json::json!({
        "exportname": "disk", "address": "127.0.0.1", "port": srv.port, "cert": pem, "subject": "localhost"
    }))
    .unwrap();
    let disk = info.builder().unwrap().open_disk().unwrap();
    assert!(disk.info().tls && !disk.info().via_go && !disk.info().structured_replies);
    let mut buf = vec![0u8; 3 << 20];
    DiskSource::read_at(&disk, MIB, &mut buf).unwrap();
    assert!(buf == data[MIB as usize..(4 * MIB) as usize]);

    // Without TLS the server refuses every option: a clear refusal, not a hang.
    let e = NbdBuilder::new("127.0.0.1", srv.port, "disk").connect().unwrap_err();
    assert!(e.to_string().contains("TLS required"), "{e}");
}

/// Forwards one connection to `target`; after `limit` bytes from the
/// server, kills the server (`srv.kill()`) and cuts both sides.
fn killing_proxy(target: u16, limit: u64, srv: Arc<QemuNbd>) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fired = Arc::new(AtomicBool::new(false));
    let fired2 = fired.clone();
    std::thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let server = TcpStream::connect(("127.0.0.1", target)).unwrap();
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut c2, &mut s2);
        });
        let (mut from, mut to) = (server, client);
        let mut seen = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let take = ((limit - seen) as usize).min(n);
            if to.write_all(&buf[..take]).is_err() {
                break;
            }
            seen += take as u64;
            if seen >= limit {
                srv.kill();
                fired2.store(true, Ordering::SeqCst);
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                break;
            }
        }
    });
    (port, fired)
}

#[test]
fn server_dying_mid_read_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    let path = image(dir.path(), size, 4);
    let srv = Arc::new(QemuNbd::start(&path, "disk", None));
    // The handshake and then 3 MiB of data go through; then the server dies.
    let (port, fired) = killing_proxy(srv.port, 3 * MIB, srv.clone());
    let mut b = NbdBuilder::new("127.0.0.1", port, "disk");
    b.go(false).structured_replies(false).connections(1).io_timeout(Duration::from_secs(20));
    let disk = b.open_disk().unwrap();
    let mut buf = vec![0u8; 16 * MIB as usize];
    let t = Instant::now();
    let e = disk.read(0, &mut buf).unwrap_err();
    assert!(fired.load(Ordering::SeqCst));
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
    let text = e.to_string();
    eprintln!("{text}");
    // The first attempt lost its connection mid-data; the retry found nobody
    // listening, and the first failure is reported.
    assert!(matches!(e, Error::Connection { .. }), "{e:?}");
    assert!(text.contains("bytes of data at offset"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");

    // Through a single connection (no retry) the error says where the data stopped.
    let srv = Arc::new(QemuNbd::start(&path, "disk", None));
    let (port, _) = killing_proxy(srv.port, 5 * MIB, srv.clone());
    let mut b = NbdBuilder::new("127.0.0.1", port, "disk");
    b.go(false).structured_replies(false);
    let mut c = b.connect().unwrap();
    let e = c.read_at(0, &mut buf).unwrap_err();
    let text = e.to_string();
    eprintln!("{text}");
    assert!(c.is_broken());
    assert!(text.contains("reading 2097152 bytes of data at offset"), "{text}");
    // DiskSource errors keep it: a SourceRead naming the disk and offset.
    let e = disk.read_at(4096, &mut [0u8; 4096]).unwrap_err();
    assert!(matches!(e, alike_core::Error::SourceRead { offset: 4096, .. }), "{e:?}");
}

#[test]
fn pooled_disk_shares_few_connections_between_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let path = image(dir.path(), size, 6);
    let data = Arc::new(std::fs::read(&path).unwrap());
    let srv = QemuNbd::start(&path, "disk", None);
    let mut b = NbdBuilder::new("127.0.0.1", srv.port, "disk");
    b.connections(2).max_request(64 << 10);
    let disk = Arc::new(b.open_disk().unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|k| {
            let (disk, data) = (disk.clone(), data.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + k);
                for _ in 0..200 {
                    let len = 1 + rng.below(200_000);
                    let off = rng.below(size - len + 1);
                    let mut buf = vec![0u8; len as usize];
                    disk.read_at(off, &mut buf).unwrap();
                    assert!(buf[..] == data[off as usize..(off + len) as usize]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(disk.open_connections(), 2);
    // Past the end: the engine's error, naming the disk.
    let e = disk.read_at(size - 1, &mut [0u8; 2]).unwrap_err();
    assert!(matches!(&e, alike_core::Error::SourceRead { disk, .. } if disk.starts_with("nbd://127.0.0.1:")), "{e:?}");
}

#[test]
fn disk_source_256_mib_matches_a_direct_read() {
    let dir = tempfile::tempdir().unwrap();
    let size = 256 * MIB;
    let path = dir.path().join("big.raw");
    {
        // Dense random data (no holes), written in 4 MiB pieces.
        let f = std::fs::File::create(&path).unwrap();
        let mut rng = Rng::new(5);
        let mut piece = vec![0u8; 4 * MIB as usize];
        for i in 0..size / (4 * MIB) {
            rng.fill(&mut piece);
            f.write_all_at(&piece, i * 4 * MIB).unwrap();
        }
    }
    // Direct read, 2 MiB at a time, for the comparison and the baseline.
    let direct = alike_core::RawFileSource::open(&path).unwrap();
    let block = 2 * MIB as usize;
    let mut want = vec![0u8; size as usize];
    let t = Instant::now();
    for (i, chunk) in want.chunks_mut(block).enumerate() {
        direct.read_at((i * block) as u64, chunk).unwrap();
    }
    let direct_secs = t.elapsed().as_secs_f64();
    let want = Arc::new(want);

    let srv = QemuNbd::start(&path, "big", None);
    let mut b = NbdBuilder::new("127.0.0.1", srv.port, "big");
    b.connections(4);
    let disk = Arc::new(b.open_disk().unwrap());
    assert_eq!(DiskSource::size(&*disk), size);

    // As the engine reads: 4 threads, 64 KiB blocks, through the pool.
    let got = Arc::new(std::sync::Mutex::new(vec![0u8; size as usize]));
    let t = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|k| {
            let (disk, got) = (disk.clone(), got.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut off = k * (64 << 10);
                while off < size {
                    disk.read_at(off, &mut buf).unwrap();
                    got.lock().unwrap()[off as usize..off as usize + buf.len()].copy_from_slice(&buf);
                    off += 4 * (64 << 10);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let pool_secs = t.elapsed().as_secs_f64();
    assert!(disk.open_connections() <= 4);
    assert!(*got.lock().unwrap() == *want, "NBD disk (4 threads × 64 KiB) differs from the file");

    // One thread, 16 MiB reads: 2 MiB requests, 8 in flight on one connection.
    let mut got = vec![0u8; size as usize];
    let t = Instant::now();
    for (i, chunk) in got.chunks_mut(16 * MIB as usize).enumerate() {
        disk.read_at(i as u64 * 16 * MIB, chunk).unwrap();
    }
    let pipe_secs = t.elapsed().as_secs_f64();
    assert!(got == *want, "NBD disk (pipelined 16 MiB reads) differs from the file");

    // The same through TLS (XAPI forces it), 4 threads x 64 KiB.
    let creds = dir.path().join("tls");
    std::fs::create_dir(&creds).unwrap();
    let (_, pem) = tls_creds(&creds);
    let tls_srv = QemuNbd::start(&path, "big", Some(&creds));
    let mut b = NbdBuilder::new("127.0.0.1", tls_srv.port, "big");
    b.connections(4).tls(ServerCertCheck::pin_pem(&pem).unwrap());
    let tls_disk = Arc::new(b.open_disk().unwrap());
    let t = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|k| {
            let (disk, want) = (tls_disk.clone(), want.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut off = k * (64 << 10);
                while off < size {
                    disk.read_at(off, &mut buf).unwrap();
                    assert!(buf[..] == want[off as usize..off as usize + buf.len()]);
                    off += 4 * (64 << 10);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let tls_secs = t.elapsed().as_secs_f64();

    let mib = (size / MIB) as f64;
    eprintln!(
        "256 MiB: direct {:.0} MiB/s; NBD pool 4 threads x 64 KiB {:.0} MiB/s; NBD one thread 16 MiB reads (2 MiB x 8 in flight) {:.0} MiB/s; NBD+TLS pool 4 threads x 64 KiB {:.0} MiB/s",
        mib / direct_secs,
        mib / pool_secs,
        mib / pipe_secs,
        mib / tls_secs
    );
}
