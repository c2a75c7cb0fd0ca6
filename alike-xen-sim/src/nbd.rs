//! An NBD server that behaves like XAPI's `xapi-nbd` (`ocaml/nbd/src/main.ml`
//! with the `xapi-project/nbd` library):
//!
//! - fixed newstyle only; the server advertises `FIXED_NEWSTYLE` and not
//!   `NO_ZEROES`, so the export reply always carries 124 zero bytes;
//! - policy from network purposes: a network with purpose `nbd` forces TLS
//!   (`NBD_OPT_STARTTLS` first; `EXPORT_NAME`/`ABORT` before it drop the
//!   connection, other options get `NBD_REP_ERR_TLS_REQD`), only
//!   `insecure_nbd` means plaintext, neither (or both) refuses connections;
//! - options: `EXPORT_NAME` (name `/<vdi-uuid>?session_id=<ref>` as
//!   `VDI.get_nbd_info` gives it; a bad name or session drops the
//!   connection), `LIST` → `ERR_POLICY`, `ABORT` → ACK and close, a second
//!   `STARTTLS` → `ERR_INVALID` (`ERR_POLICY` in plaintext), everything else
//!   (`GO`, `INFO`, `STRUCTURED_REPLY`, …) → `ERR_UNSUP`, unless
//!   [`crate::SimConfig::nbd_go`] enables `GO`/`INFO`;
//! - transmission: flags `HAS_FLAGS|READ_ONLY`; simple replies; `READ`
//!   (offset and length multiples of 512, else `EINVAL`), `WRITE` → `EPERM`,
//!   `DISC` closes, any other command → `EINVAL`. Several requests may be in
//!   flight; replies go out as reads complete.
//!
//! The wire codec is the sync functions at the top; the rest is the tokio shell.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::Inner;
use crate::http::Io;
use crate::records::Class;
use crate::state::NbdPolicy;
use crate::store::ChainReader;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const CLIENT_FIXED_NEWSTYLE: u32 = 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_POLICY: u32 = 0x8000_0002;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_TLS_REQD: u32 = 0x8000_0005;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

const TRANSMISSION_FLAGS: u16 = 1 | 2; // HAS_FLAGS | READ_ONLY
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
/// Largest read served (qemu asks for at most 32 MiB).
const MAX_READ: u32 = 32 << 20;

/// The server greeting.
fn greeting() -> Vec<u8> {
    let mut v = Vec::with_capacity(18);
    v.extend_from_slice(&NBDMAGIC.to_be_bytes());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&FLAG_FIXED_NEWSTYLE.to_be_bytes());
    v
}

/// An option reply.
fn option_reply(opt: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// The reply to `EXPORT_NAME`: size, flags and 124 zero bytes.
fn export_reply(size: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(134);
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    v.resize(134, 0);
    v
}

/// A simple reply header.
fn simple_reply(error: u32, handle: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    v[4..8].copy_from_slice(&error.to_be_bytes());
    v[8..].copy_from_slice(&handle.to_be_bytes());
    v
}

/// A transmission request.
#[derive(Debug, Clone, Copy)]
struct NbdRequest {
    kind: u16,
    handle: u64,
    offset: u64,
    len: u32,
}

fn parse_request(b: &[u8; 28]) -> Option<NbdRequest> {
    let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let be64 = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
    if be32(0) != REQUEST_MAGIC {
        return None;
    }
    Some(NbdRequest { kind: u16::from_be_bytes([b[6], b[7]]), handle: be64(8), offset: be64(16), len: be32(24) })
}

/// Accepts NBD connections until the runtime stops.
pub(crate) async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            let _ = handle(Box::new(stream), inner).await;
        });
    }
}

/// Looks up an export name: `/<vdi-uuid>?session_id=<ref>`.
fn lookup(inner: &Inner, name: &str) -> Option<ChainReader> {
    let (path, query) = name.split_once('?')?;
    let uuid = path.trim_start_matches('/');
    let session = query.split('&').find_map(|kv| kv.strip_prefix("session_id="))?;
    let mut st = inner.state();
    st.check_session(session).ok()?;
    let vdi = st.by_uuid(Class::Vdi, uuid).ok()?;
    if st.str_of(&vdi, "type") == "cbt_metadata" {
        return None;
    }
    st.vdi_reader(&vdi).ok()
}

async fn handle(mut io: Box<dyn Io>, inner: Arc<Inner>) -> std::io::Result<()> {
    let policy = inner.state().nbd_policy();
    if policy == NbdPolicy::Refuse {
        return Ok(());
    }
    io.write_all(&greeting()).await?;
    let client_flags = io.read_u32().await?;
    if client_flags & CLIENT_FIXED_NEWSTYLE == 0 && policy == NbdPolicy::ForcedTls {
        return Ok(());
    }
    let mut tls_done = false;
    loop {
        if io.read_u64().await? != IHAVEOPT {
            return Ok(());
        }
        let opt = io.read_u32().await?;
        let len = io.read_u32().await?;
        if len > 64 << 10 {
            return Ok(());
        }
        let mut data = vec![0u8; len as usize];
        io.read_exact(&mut data).await?;
        if policy == NbdPolicy::ForcedTls && !tls_done {
            match opt {
                OPT_STARTTLS => {
                    io.write_all(&option_reply(opt, REP_ACK, &[])).await?;
                    io.flush().await?;
                    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&inner.tls));
                    io = Box::new(acceptor.accept(io).await?);
                    tls_done = true;
                }
                OPT_EXPORT_NAME | OPT_ABORT => return Ok(()),
                _ => io.write_all(&option_reply(opt, REP_ERR_TLS_REQD, &[])).await?,
            }
            continue;
        }
        match opt {
            OPT_EXPORT_NAME => {
                let Some(reader) = lookup(&inner, &String::from_utf8_lossy(&data)) else { return Ok(()) };
                io.write_all(&export_reply(reader.size())).await?;
                io.flush().await?;
                return transmission(io, reader, inner).await;
            }
            OPT_STARTTLS => {
                let kind = if policy == NbdPolicy::ForcedTls { REP_ERR_INVALID } else { REP_ERR_POLICY };
                io.write_all(&option_reply(opt, kind, &[])).await?;
            }
            OPT_LIST => io.write_all(&option_reply(opt, REP_ERR_POLICY, &[])).await?,
            OPT_ABORT => {
                io.write_all(&option_reply(opt, REP_ACK, &[])).await?;
                io.flush().await?;
                return Ok(());
            }
            OPT_GO | OPT_INFO if inner.nbd_go => {
                let name = data.get(4..).and_then(|d| {
                    let n = u32::from_be_bytes(data[..4].try_into().ok()?) as usize;
                    d.get(..n).map(|s| String::from_utf8_lossy(s).into_owned())
                });
                match name.and_then(|n| lookup(&inner, &n)) {
                    None => io.write_all(&option_reply(opt, REP_ERR_UNKNOWN, &[])).await?,
                    Some(reader) => {
                        let mut info = Vec::with_capacity(12);
                        info.extend_from_slice(&0u16.to_be_bytes()); // NBD_INFO_EXPORT
                        info.extend_from_slice(&reader.size().to_be_bytes());
                        info.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                        io.write_all(&option_reply(opt, REP_INFO, &info)).await?;
                        io.write_all(&option_reply(opt, REP_ACK, &[])).await?;
                        io.flush().await?;
                        if opt == OPT_GO {
                            return transmission(io, reader, inner).await;
                        }
                    }
                }
            }
            _ => io.write_all(&option_reply(opt, REP_ERR_UNSUP, &[])).await?,
        }
        io.flush().await?;
    }
}

async fn transmission(io: Box<dyn Io>, reader: ChainReader, inner: Arc<Inner>) -> std::io::Result<()> {
    let (mut rd, wr) = tokio::io::split(io);
    let wr = Arc::new(Mutex::new(wr));
    let limit = inner.faults.take_nbd_drop();
    let sent = Arc::new(AtomicU64::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let reader = Arc::new(reader);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let mut b = [0u8; 28];
        if rd.read_exact(&mut b).await.is_err() || dead.load(Ordering::SeqCst) {
            break;
        }
        let Some(req) = parse_request(&b) else { break };
        match req.kind {
            CMD_READ => {
                let end = req.offset.checked_add(u64::from(req.len));
                let bad = req.offset % 512 != 0
                    || req.len % 512 != 0
                    || req.len > MAX_READ
                    || end.is_none_or(|e| e > reader.size());
                if bad {
                    wr.lock().await.write_all(&simple_reply(EINVAL, req.handle)).await?;
                    continue;
                }
                let (wr, reader, sent, dead, inner) =
                    (Arc::clone(&wr), Arc::clone(&reader), Arc::clone(&sent), Arc::clone(&dead), Arc::clone(&inner));
                tasks.spawn(async move {
                    let r = Arc::clone(&reader);
                    let data = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; req.len as usize];
                        r.read_at(req.offset, &mut buf).map(|()| buf)
                    })
                    .await;
                    let mut w = wr.lock().await;
                    let Ok(Ok(data)) = data else {
                        let _ = w.write_all(&simple_reply(EIO, req.handle)).await;
                        return;
                    };
                    inner.nbd_read_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    let mut out = Vec::with_capacity(16 + data.len());
                    out.extend_from_slice(&simple_reply(0, req.handle));
                    out.extend_from_slice(&data);
                    if let Some(l) = limit {
                        let before = sent.fetch_add(data.len() as u64, Ordering::SeqCst);
                        if before + data.len() as u64 > l {
                            let keep = (l.saturating_sub(before)) as usize;
                            let _ = w.write_all(&out[..16 + keep.min(data.len())]).await;
                            let _ = w.shutdown().await;
                            dead.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                    let _ = w.write_all(&out).await;
                });
            }
            CMD_WRITE => {
                let mut left = u64::from(req.len);
                let mut sink = vec![0u8; 64 << 10];
                while left > 0 {
                    let n = left.min(sink.len() as u64) as usize;
                    rd.read_exact(&mut sink[..n]).await?;
                    left -= n as u64;
                }
                wr.lock().await.write_all(&simple_reply(EPERM, req.handle)).await?;
            }
            CMD_DISC => break,
            _ => wr.lock().await.write_all(&simple_reply(EINVAL, req.handle)).await?,
        }
    }
    while tasks.join_next().await.is_some() {}
    let _ = wr.lock().await.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_shapes() {
        assert_eq!(&greeting()[..8], b"NBDMAGIC");
        assert_eq!(&greeting()[8..16], b"IHAVEOPT");
        assert_eq!(export_reply(1 << 30).len(), 134);
        assert_eq!(&export_reply(1 << 30)[8..10], &[0, 3]);
        assert_eq!(option_reply(7, REP_ERR_UNSUP, &[]).len(), 20);
        let mut req = [0u8; 28];
        req[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req[8..16].copy_from_slice(&9u64.to_be_bytes());
        req[24..].copy_from_slice(&4096u32.to_be_bytes());
        let r = parse_request(&req).unwrap();
        assert_eq!((r.kind, r.handle, r.offset, r.len), (CMD_READ, 9, 0, 4096));
    }
}
