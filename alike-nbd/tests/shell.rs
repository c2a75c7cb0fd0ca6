//! The blocking shell with clients nobody here wrote (qemu-img, nbdinfo,
//! nbdcopy) and with this crate's own client half, over an in-memory
//! export whose all-zero 4 KiB blocks are holes.
#![allow(missing_docs, unreachable_pub)]

use std::ops::Range;
use std::path::Path;
use std::process::Command;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use alike_nbd::proto::{self, EIO, STATE_HOLE, STATE_ZERO};
use alike_nbd::serve::{CommandError, Export, Listener, ServeOptions, ServeReport, serve};
use alike_nbd::server::{ExportConfig, Extent, ServerConfig};

const BLOCK: u64 = 4096;

/// An export in memory: 4 KiB blocks that are all zero are holes.
struct Mem {
    data: RwLock<Vec<u8>>,
    /// Reads of this range fail with EIO.
    bad: Option<Range<u64>>,
}

impl Mem {
    fn new(data: Vec<u8>) -> Mem {
        Mem { data: RwLock::new(data), bad: None }
    }
    fn is_hole(d: &[u8], b: u64) -> bool {
        let s = (b * BLOCK) as usize;
        d[s..(s + BLOCK as usize).min(d.len())].iter().all(|&x| x == 0)
    }
}

impl Export for Mem {
    fn size(&self) -> u64 {
        self.data.read().unwrap().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<Vec<Range<u64>>, CommandError> {
        let end = offset + buf.len() as u64;
        if self.bad.as_ref().is_some_and(|b| b.start < end && offset < b.end) {
            return Err(CommandError::new(EIO, "damaged block"));
        }
        let d = self.data.read().unwrap();
        buf.copy_from_slice(&d[offset as usize..end as usize]);
        let mut holes: Vec<Range<u64>> = Vec::new();
        for b in offset / BLOCK..end.div_ceil(BLOCK) {
            if Mem::is_hole(&d, b) {
                let r = (b * BLOCK).max(offset)..((b + 1) * BLOCK).min(end);
                match holes.last_mut() {
                    Some(h) if h.end == r.start => h.end = r.end,
                    _ => holes.push(r),
                }
            }
        }
        Ok(holes)
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, CommandError> {
        let d = self.data.read().unwrap();
        let end = (offset + len).min(d.len() as u64);
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let b = at / BLOCK;
            let next = ((b + 1) * BLOCK).min(end);
            let flags = if Mem::is_hole(&d, b) { STATE_HOLE | STATE_ZERO } else { 0 };
            out.push(Extent { len: next - at, flags });
            at = next;
        }
        Ok(out)
    }
    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), CommandError> {
        self.data.write().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<(), CommandError> {
        self.data.write().unwrap()[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

/// 8 MiB: data in the first MiB and at 5 MiB, holes elsewhere.
fn image() -> Vec<u8> {
    let mut d = vec![0u8; 8 << 20];
    alike_testing::Rng::new(7).fill(&mut d[..1 << 20]);
    alike_testing::Rng::new(8).fill(&mut d[5 << 20..(5 << 20) + 300_000]);
    d
}

/// Runs `f` with a server of `exports` on `listener`, then stops it.
fn with_server<T>(
    listener: Listener,
    cfg: ServerConfig,
    exports: &[&dyn Export],
    f: impl FnOnce(&Listener) -> T,
) -> (T, ServeReport) {
    let stop = AtomicBool::new(false);
    let stop_fn = || stop.load(Ordering::SeqCst);
    /// Stops the server also when `f` panics (else the scope would wait forever).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        let l = &listener;
        let (cfg, stop_fn) = (&cfg, &stop_fn);
        let h = s.spawn(move || serve(l, cfg, exports, &ServeOptions::new(stop_fn)).unwrap());
        let guard = StopOnDrop(&stop);
        let r = f(l);
        drop(guard);
        (r, h.join().unwrap())
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn write(dir: &Path, name: &str, d: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, d).unwrap();
    p
}

#[test]
fn qemu_img_and_libnbd_read_a_memory_export_bit_exact_with_holes() {
    if !alike_testing::require_tool("qemu-img") || !alike_testing::require_tool("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let reference = write(dir.path(), "ref.img", &img);
    let mem = Mem::new(img.clone());
    let cfg = ServerConfig::new(vec![ExportConfig::read_only("disk0", img.len() as u64)]);
    let ((), report) = with_server(Listener::tcp("127.0.0.1:0").unwrap(), cfg, &[&mem], |l| {
        let uri = l.export_uri("disk0");
        // qemu-img: structured replies, block status, several requests in flight.
        run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&uri).arg(&reference));
        let out = dir.path().join("copy.img");
        run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw"]).arg(&uri).arg(&out));
        assert!(std::fs::read(&out).unwrap() == img);
        // nbdinfo: the map shows the holes.
        let map = run(Command::new("nbdinfo").arg("--map").arg(&uri));
        assert!(map.contains("hole,zero"), "{map}");
        let first: Vec<&str> = map.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(first[..3], ["0", "1048576", "0"], "{map}");
        // The default export (the empty name) is the first.
        let info = run(Command::new("nbdinfo").arg("--json").arg(l.uri()));
        assert!(info.contains("\"export-size\": 8388608"), "{info}");
        assert!(info.contains("\"can_multi_conn\": true") && info.contains("\"is_read_only\": true"), "{info}");
        // nbdcopy with several connections at once.
        if alike_testing::require_tool("nbdcopy") {
            let out2 = dir.path().join("copy2.img");
            run(Command::new("nbdcopy").args(["--connections=4", "--requests=8"]).arg(&uri).arg(&out2));
            assert!(std::fs::read(&out2).unwrap() == img);
        }
    });
    assert!(report.connections >= 4, "{report:?}");
    assert!(report.bytes_read < 3 * img.len() as u64, "holes travel as holes: {report:?}");
}

#[test]
fn unix_socket_export_names_and_unknown_export() {
    if !alike_testing::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = Mem::new(image());
    let mut bimg = vec![3u8; 1 << 20];
    bimg[..4096].fill(0);
    let b = Mem::new(bimg.clone());
    let cfg = ServerConfig::new(vec![
        ExportConfig::read_only("disk0", 8 << 20),
        ExportConfig::read_only("disk1", 1 << 20).description("second disk"),
    ])
    .default_export(None);
    let sock = dir.path().join("nbd.sock");
    let reference = write(dir.path(), "b.img", &bimg);
    let ((), _) = with_server(Listener::unix(&sock).unwrap(), cfg, &[&a, &b], |l| {
        let uri = l.export_uri("disk1");
        assert!(uri.starts_with("nbd+unix:///disk1?socket="), "{uri}");
        run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&uri).arg(&reference));
        // No default export: the empty name is refused with a message.
        let out = Command::new("qemu-img").args(["info", "-f", "raw"]).arg(l.uri()).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no export named") && err.contains("disk1"), "{err}");
        if alike_testing::require_tool("nbdinfo") {
            let list = run(Command::new("nbdinfo").arg("--list").arg(l.uri()));
            assert!(list.contains("disk0") && list.contains("second disk"), "{list}");
        }
    });
    assert!(!sock.exists(), "the socket file is removed");
    // A live socket is not replaced; a stale one is.
    std::fs::write(&sock, b"not a socket").unwrap();
    assert!(Listener::unix(&sock).is_err());
    std::fs::remove_file(&sock).unwrap();
    let stale = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(stale);
    assert!(Listener::unix(&sock).is_ok());
}

#[test]
fn writes_through_qemu_io_and_refusals_on_read_only() {
    // qemu-io comes with qemu-img (qemu-utils).
    if !alike_testing::require_tool("qemu-io") {
        return;
    }
    let mem = Mem::new(vec![0u8; 4 << 20]);
    let cfg = ServerConfig::new(vec![ExportConfig::read_only("rw", 4 << 20).writable(true)]);
    let ((), report) = with_server(Listener::tcp("127.0.0.1:0").unwrap(), cfg, &[&mem], |l| {
        let uri = l.export_uri("rw");
        run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0xab 4096 12288", "-c", "flush"]).arg(&uri));
        run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -z 8192 4096"]).arg(&uri));
        let out = run(Command::new("qemu-io").args(["-f", "raw", "-c", "read -P 0xab 4096 4096"]).arg(&uri));
        assert!(!out.contains("Pattern verification failed"), "{out}");
    });
    assert_eq!(report.bytes_written, 12288, "{report:?}");
    let d = mem.data.read().unwrap();
    assert!(d[4096..8192].iter().all(|&x| x == 0xab));
    assert!(d[8192..12288].iter().all(|&x| x == 0));
    assert!(d[12288..16384].iter().all(|&x| x == 0xab));
    // Read-only: qemu opens it read-only, and a write is refused.
    let ro = Mem::new(vec![1u8; 1 << 20]);
    let cfg = ServerConfig::new(vec![ExportConfig::read_only("ro", 1 << 20)]);
    with_server(Listener::tcp("127.0.0.1:0").unwrap(), cfg, &[&ro], |l| {
        let out = Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 1 0 4096"])
            .arg(l.export_uri("ro"))
            .output()
            .unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success() && all.contains("Permission denied"), "{all}");
    });
    assert!(ro.data.read().unwrap().iter().all(|&x| x == 1));
}

#[test]
fn own_client_half_reads_through_the_shell_and_read_errors_keep_the_connection() {
    let img = image();
    let mut mem = Mem::new(img.clone());
    mem.bad = Some(4096..8192);
    let cfg = ServerConfig::new(vec![ExportConfig::read_only("d", img.len() as u64)]);
    let (r, _) = with_server(Listener::tcp("127.0.0.1:0").unwrap(), cfg, &[&mem], |l| {
        let Listener::Tcp(t) = l else { unreachable!() };
        let mut s = std::net::TcpStream::connect(t.local_addr().unwrap()).unwrap();
        client_reads(&mut s, &[(0, 4096), (4096, 4096), (1 << 20, 1 << 20), (0, 65536)])
    });
    assert!(r[0].as_ref().unwrap()[..] == img[..4096]);
    let e = r[1].as_ref().unwrap_err();
    assert!(matches!(e, proto::ProtoError::Command { errno: EIO, .. }) && e.to_string().contains("damaged block"));
    assert!(r[2].as_ref().unwrap().iter().all(|&x| x == 0) == img[1 << 20..2 << 20].iter().all(|&x| x == 0));
    assert!(r[3].is_err(), "overlaps the damaged block");
}

/// A minimal blocking client over `alike_nbd::{Handshake, Transmission}`.
fn client_reads(s: &mut std::net::TcpStream, reads: &[(u64, u32)]) -> Vec<Result<Vec<u8>, proto::ProtoError>> {
    use alike_nbd::{Handshake, HandshakeConfig, HandshakeEvent, Progress, Step, Transmission};
    use std::io::{Read, Write};
    let mut hs = Handshake::new(HandshakeConfig::new("d")).unwrap();
    let mut buf = Vec::new();
    let fill = |s: &mut std::net::TcpStream, buf: &mut Vec<u8>, n: usize| {
        while buf.len() < n {
            let at = buf.len();
            buf.resize(n, 0);
            let k = s.read(&mut buf[at..]).unwrap();
            assert!(k > 0, "server closed");
            buf.truncate(at + k);
        }
    };
    let info = loop {
        if let Some(out) = hs.poll_transmit() {
            s.write_all(&out).unwrap();
        }
        if let Some(HandshakeEvent::Done(i)) = hs.poll_event() {
            break i;
        }
        match hs.handle_input(&buf).unwrap() {
            Progress::Consumed(n) => drop(buf.drain(..n)),
            Progress::NeedMore(n) => fill(s, &mut buf, n),
        }
    };
    assert!(info.structured_replies && info.via_go);
    let mut tx = Transmission::new(&info);
    let mut out: Vec<Result<Vec<u8>, proto::ProtoError>> = Vec::new();
    for &(off, len) in reads {
        let (handle, req) = tx.read_request(off, len).unwrap();
        s.write_all(&req).unwrap();
        let mut data = vec![0xEEu8; len as usize];
        loop {
            match tx.handle_input(&buf).unwrap() {
                Step::NeedMore(n) => fill(s, &mut buf, n),
                Step::Consumed(n) => drop(buf.drain(..n)),
                Step::Payload { consumed, at, len, .. } => {
                    buf.drain(..consumed);
                    fill(s, &mut buf, len as usize);
                    data[at as usize..][..len as usize].copy_from_slice(&buf[..len as usize]);
                    buf.drain(..len as usize);
                    tx.payload_done();
                }
                Step::Zeroes { consumed, at, len, .. } => {
                    buf.drain(..consumed);
                    data[at as usize..][..len as usize].fill(0);
                }
                Step::Finished { consumed, handle: h, result } => {
                    buf.drain(..consumed);
                    assert_eq!(h, handle);
                    out.push(result.map(|()| data));
                    break;
                }
            }
        }
    }
    s.write_all(&tx.disconnect_request()).unwrap();
    out
}

/// A stand-in for a TLS library: its "handshake" waits for one byte from
/// the client, asking `proceed` each time a read times out.
struct WaitingAcceptor;

impl alike_nbd::serve::TlsAcceptor for WaitingAcceptor {
    fn accept(
        &self,
        mut io: Box<dyn alike_nbd::serve::Io>,
        writer: Box<dyn std::io::Write + Send>,
        proceed: &dyn Fn() -> std::io::Result<()>,
    ) -> std::io::Result<alike_nbd::serve::TlsHalves> {
        let mut b = [0u8; 1];
        loop {
            match io.read(&mut b) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => return Ok((Box::new(io), writer)),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    proceed()?
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Connects, sends `NBD_OPT_STARTTLS`, checks the server's `NBD_REP_ACK`,
/// and returns the socket with the TLS handshake not started.
fn starttls(port: u16) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&proto::OPT_STARTTLS.to_be_bytes());
    opt.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&opt).unwrap();
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(u32::from_be_bytes(reply[12..16].try_into().unwrap()), proto::REP_ACK);
    s
}

#[test]
fn a_stalled_tls_handshake_ends_at_the_deadline_and_when_the_server_stops() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let mem = Mem::new(image());
    let cfg = ServerConfig::new(vec![ExportConfig::read_only("d", 8 << 20)]).tls(alike_nbd::server::TlsMode::Required);
    for stop_it in [false, true] {
        let listener = Listener::tcp("127.0.0.1:0").unwrap();
        let port = match &listener {
            Listener::Tcp(l) => l.local_addr().unwrap().port(),
            _ => unreachable!(),
        };
        let stop = AtomicBool::new(false);
        let stop_fn = || stop.load(Ordering::SeqCst);
        let closed = std::sync::Mutex::new(Vec::new());
        let on_event = |e: &alike_nbd::serve::ServeEvent| {
            if let alike_nbd::serve::ServeEvent::Closed { error, .. } = e {
                closed.lock().unwrap().push(error.clone());
            }
        };
        let mut opts = ServeOptions::new(&stop_fn);
        opts.tls = Some(&WaitingAcceptor);
        opts.on_event = Some(&on_event);
        // Stopping must not wait for the handshake deadline.
        opts.handshake_timeout = if stop_it { Duration::from_secs(60) } else { Duration::from_millis(300) };
        std::thread::scope(|sc| {
            let h = sc.spawn(|| serve(&listener, &cfg, &[&mem], &opts).unwrap());
            let mut s = starttls(port);
            let t0 = Instant::now();
            if stop_it {
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, Ordering::SeqCst);
                h.join().unwrap();
            }
            // The server closes the stalled connection.
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).unwrap(), 0, "the connection was closed");
            assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
            stop.store(true, Ordering::SeqCst);
        });
        let closed = closed.into_inner().unwrap();
        let want = if stop_it { "stopping" } else { "took longer" };
        assert!(closed.len() == 1 && closed[0].as_deref().is_some_and(|e| e.contains(want)), "{closed:?}");
    }
}

/// Connects and negotiates export "d" with structured replies; the socket in transmission.
fn connect_structured(l: &Listener) -> std::net::TcpStream {
    use alike_nbd::{Handshake, HandshakeConfig, HandshakeEvent, Progress};
    use std::io::{Read, Write};
    let Listener::Tcp(t) = l else { unreachable!() };
    let mut s = std::net::TcpStream::connect(t.local_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut hs = Handshake::new(HandshakeConfig::new("d")).unwrap();
    let mut buf = Vec::new();
    let info = loop {
        if let Some(out) = hs.poll_transmit() {
            s.write_all(&out).unwrap();
        }
        if let Some(HandshakeEvent::Done(i)) = hs.poll_event() {
            break i;
        }
        match hs.handle_input(&buf).unwrap() {
            Progress::Consumed(n) => drop(buf.drain(..n)),
            Progress::NeedMore(n) => {
                let at = buf.len();
                buf.resize(n, 0);
                s.read_exact(&mut buf[at..]).unwrap();
            }
        }
    };
    assert!(info.structured_replies);
    s
}

/// One reply as this raw client reads it: the handle, the error (0: none)
/// and, for a read, the data (holes as zeroes).
#[derive(Debug)]
struct RawReply {
    handle: u64,
    error: u32,
    data: Vec<u8>,
}

/// Reads replies until `n` are complete, in the order they complete.
/// `reads` gives each read handle's (offset, len).
fn raw_replies(
    s: &mut std::net::TcpStream,
    reads: &std::collections::HashMap<u64, (u64, usize)>,
    n: usize,
) -> Vec<RawReply> {
    use std::io::Read;
    let mut partial: std::collections::HashMap<u64, Vec<u8>> = std::collections::HashMap::new();
    let mut done = Vec::new();
    let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().unwrap());
    let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().unwrap());
    while done.len() < n {
        let mut magic = [0u8; 4];
        s.read_exact(&mut magic).unwrap();
        if be32(&magic) == proto::SIMPLE_REPLY_MAGIC {
            let mut rest = [0u8; 12];
            s.read_exact(&mut rest).unwrap();
            done.push(RawReply { handle: be64(&rest[4..]), error: be32(&rest), data: Vec::new() });
            continue;
        }
        assert_eq!(be32(&magic), proto::STRUCTURED_REPLY_MAGIC);
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let flags = u16::from_be_bytes([h[0], h[1]]);
        let ty = u16::from_be_bytes([h[2], h[3]]);
        let handle = be64(&h[4..]);
        let mut payload = vec![0u8; be32(&h[12..]) as usize];
        s.read_exact(&mut payload).unwrap();
        let (off, len) = reads[&handle];
        let data = partial.entry(handle).or_insert_with(|| vec![0xEE; len]);
        let mut error = 0;
        match ty {
            proto::REPLY_TYPE_OFFSET_DATA => {
                let at = (be64(&payload) - off) as usize;
                data[at..at + payload.len() - 8].copy_from_slice(&payload[8..]);
            }
            proto::REPLY_TYPE_OFFSET_HOLE => {
                let at = (be64(&payload) - off) as usize;
                data[at..at + be32(&payload[8..]) as usize].fill(0);
            }
            t if t & proto::REPLY_TYPE_FLAG_ERROR != 0 => error = be32(&payload),
            t => panic!("reply type {t}"),
        }
        if flags & proto::REPLY_FLAG_DONE != 0 {
            let data = partial.remove(&handle).unwrap();
            done.push(RawReply { handle, error, data });
        }
    }
    done
}

/// Wraps an export: reads wait (up to 3 s) until `gate` reads are inside
/// at once, the read at offset 0 also until 3 others finished; every read
/// and write is logged with the time it started and ended.
struct Probe<'a> {
    inner: &'a Mem,
    gate: usize,
    /// Each read sleeps this long once through the gate.
    slow: std::time::Duration,
    state: std::sync::Mutex<(usize, usize, usize)>, // (inside, most inside, finished)
    changed: std::sync::Condvar,
    log: std::sync::Mutex<Vec<(&'static str, u64, std::time::Instant, std::time::Instant)>>,
}

impl<'a> Probe<'a> {
    fn new(inner: &'a Mem, gate: usize, slow: std::time::Duration) -> Probe<'a> {
        Probe {
            inner,
            gate,
            slow,
            state: std::sync::Mutex::new((0, 0, 0)),
            changed: std::sync::Condvar::new(),
            log: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl Export for Probe<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<Vec<Range<u64>>, CommandError> {
        let t0 = std::time::Instant::now();
        let wait = std::time::Duration::from_secs(3);
        {
            let mut g = self.state.lock().unwrap();
            g.0 += 1;
            g.1 = g.1.max(g.0);
            self.changed.notify_all();
            g = self.changed.wait_timeout_while(g, wait, |s| s.0 < self.gate && s.1 < self.gate).unwrap().0;
            if offset == 0 {
                g = self.changed.wait_timeout_while(g, wait, |s| s.2 < 3).unwrap().0;
            }
            drop(g);
        }
        std::thread::sleep(self.slow);
        let r = self.inner.read_at(offset, buf);
        let mut g = self.state.lock().unwrap();
        g.0 -= 1;
        g.2 += 1;
        self.changed.notify_all();
        drop(g);
        self.log.lock().unwrap().push(("read", offset, t0, std::time::Instant::now()));
        r
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, CommandError> {
        self.inner.extents(offset, len)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), CommandError> {
        let t0 = std::time::Instant::now();
        let r = self.inner.write_at(offset, data, fua);
        self.log.lock().unwrap().push(("write", offset, t0, std::time::Instant::now()));
        r
    }
}

#[test]
fn one_connection_serves_several_reads_at_once_and_replies_as_each_is_ready() {
    use std::io::Write;
    let img = image();
    let mem = Mem::new(img.clone());
    let probe = Probe::new(&mem, 4, std::time::Duration::ZERO);
    let cfg = ServerConfig::new(vec![ExportConfig::read_only("d", img.len() as u64)]);
    // Eight reads sent before any reply is read: data, holes, both.
    let reads: Vec<(u64, u32)> = (0..8u64).map(|k| (k * (640 << 10), 512 << 10)).collect();
    let (order, report) = with_server(Listener::tcp("127.0.0.1:0").unwrap(), cfg, &[&probe], |l| {
        let mut s = connect_structured(l);
        let mut out = Vec::new();
        let mut map = std::collections::HashMap::new();
        for (h, &(off, len)) in reads.iter().enumerate() {
            out.extend_from_slice(&proto::encode_request(0, proto::CMD_READ, 100 + h as u64, off, len));
            map.insert(100 + h as u64, (off, len as usize));
        }
        s.write_all(&out).unwrap();
        let got = raw_replies(&mut s, &map, reads.len());
        s.write_all(&proto::encode_request(0, proto::CMD_DISC, 1, 0, 0)).unwrap();
        got
    });
    let st = *probe.state.lock().unwrap();
    assert!(st.1 >= 4, "at most {} reads of one connection were served at once", st.1);
    assert_eq!(order.len(), 8);
    for r in &order {
        let (off, len) = reads[(r.handle - 100) as usize];
        assert_eq!(r.error, 0);
        assert!(r.data[..] == img[off as usize..off as usize + len as usize], "read {} differs", r.handle);
    }
    // The first read waited for three others: its reply was not first.
    assert_ne!(
        order[0].handle,
        100,
        "replies in request order: {:?}",
        order.iter().map(|r| r.handle).collect::<Vec<_>>()
    );
    assert_eq!(report.requests, 9);
}

#[test]
fn a_write_waits_for_the_reads_before_it_and_reads_after_it_see_it() {
    use std::io::Write;
    let img = image();
    let mem = Mem::new(img.clone());
    // Reads take 100 ms each, all four at once: a write that did not wait would land among them.
    let probe = Probe::new(&mem, 4, std::time::Duration::from_millis(100));
    let cfg = ServerConfig::new(vec![ExportConfig::read_only("d", img.len() as u64).writable(true)]);
    let new_data = vec![0xABu8; 64 << 10];
    let (replies, _) = with_server(Listener::tcp("127.0.0.1:0").unwrap(), cfg, &[&probe], |l| {
        let mut s = connect_structured(l);
        let mut out = Vec::new();
        let mut map = std::collections::HashMap::new();
        for h in 1..=4u64 {
            out.extend_from_slice(&proto::encode_request(0, proto::CMD_READ, h, (h - 1) * 4096, 64 << 10));
            map.insert(h, ((h - 1) * 4096, 64 << 10));
        }
        out.extend_from_slice(&proto::encode_request(0, proto::CMD_WRITE, 5, 0, 64 << 10));
        out.extend_from_slice(&new_data);
        map.insert(5, (0, 0));
        out.extend_from_slice(&proto::encode_request(0, proto::CMD_READ, 6, 0, 64 << 10));
        map.insert(6, (0, 64 << 10));
        s.write_all(&out).unwrap();
        let got = raw_replies(&mut s, &map, 6);
        s.write_all(&proto::encode_request(0, proto::CMD_DISC, 7, 0, 0)).unwrap();
        got
    });
    let pos = |h: u64| replies.iter().position(|r| r.handle == h).unwrap();
    for h in 1..=4u64 {
        let off = ((h - 1) * 4096) as usize;
        let r = &replies[pos(h)];
        assert!(r.error == 0 && r.data[..] == img[off..off + (64 << 10)], "read {h} saw the later write");
        assert!(pos(h) < pos(5), "the write was answered before read {h}");
    }
    assert_eq!(replies[pos(5)].error, 0);
    assert!(replies[pos(6)].data == new_data && pos(6) > pos(5), "the read after the write");
    assert!(mem.data.read().unwrap()[..64 << 10] == new_data[..]);
    // The export saw it so too: the write began after every read before it ended.
    let log = probe.log.lock().unwrap();
    let write = log.iter().find(|e| e.0 == "write").unwrap();
    let reads_before: Vec<_> = log.iter().filter(|e| e.0 == "read" && e.3 <= write.2).collect();
    assert_eq!(reads_before.len(), 4, "{log:?}");
    assert!(log.iter().filter(|e| e.0 == "read").all(|e| e.3 <= write.2 || e.2 >= write.3), "{log:?}");
    assert!(probe.state.lock().unwrap().1 >= 4, "the reads before the write ran at once");
}
