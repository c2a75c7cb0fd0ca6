//! NBD export of a version (`Store::serve_nbd`), proven by clients nobody
//! here wrote: qemu-img (convert, compare, qemu-io), nbdinfo (--map), nbdcopy,
//! nbdfuse (through the kernel's FUSE);
//! two clients at once; a writable overlay; GC while an export runs. Each
//! for a store of either chunking.

use std::path::Path;
use std::process::Command;

use alike::{CancelToken, Chunking, ErrorKind, NbdListening, NbdOptions, Store, Version};

use super::util::Env;

const MIB: u64 = 1 << 20;

/// Data regions of the test image (the rest is zeroes): aligned to 64 KiB
/// so both chunkings see the same holes.
const DATA: [(u64, u64); 3] = [(0, 4 * MIB), (20 * MIB, 3 * MIB), (40 * MIB + 65536, 960 * 1024)];
const SIZE: u64 = 48 * MIB;

fn image(path: &Path, seed: u64) -> Vec<u8> {
    let mut d = vec![0u8; SIZE as usize];
    for (k, (at, len)) in DATA.iter().enumerate() {
        alike_testing::Rng::new(seed + k as u64).fill(&mut d[*at as usize..(*at + *len) as usize]);
    }
    std::fs::write(path, &d).unwrap();
    d
}

fn tools(names: &[&str]) -> bool {
    names.iter().all(|t| alike_testing::require_tool(t))
}

/// Serves `v` with `opts` on a free port while `f` runs (with where it
/// listens), then stops it: `f`'s result and the session's report.
pub(super) fn serving<T>(
    store: &Store,
    v: &Version,
    opts: NbdOptions,
    f: impl FnOnce(&NbdListening) -> T,
) -> (T, alike::Result<alike::NbdReport>) {
    let stop = CancelToken::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = opts.cancel_token(stop.clone()).on_listening(move |l| tx.send(l.clone()).unwrap());
    struct Cancel(CancelToken);
    impl Drop for Cancel {
        fn drop(&mut self) {
            self.0.cancel();
        }
    }
    std::thread::scope(|s| {
        let h = s.spawn(|| store.serve_nbd(v, &opts));
        let _c = Cancel(stop.clone());
        let l = match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                stop.cancel();
                panic!("never listened: {:?}", h.join().unwrap().err());
            }
        };
        let r = f(&l);
        stop.cancel();
        (r, h.join().unwrap())
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// (offset, length, is_hole) from `nbdinfo --map`.
fn map(uri: &str) -> Vec<(u64, u64, bool)> {
    run(Command::new("nbdinfo").arg("--map").arg(uri))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), l.contains("hole"))
        })
        .collect()
}

fn local(store: &Store) -> NbdOptions {
    let _ = store;
    NbdOptions::default().listen_tcp("127.0.0.1:0")
}

#[test]
fn real_clients_read_a_version_bit_exact_with_holes_in_both_chunkings() {
    if !tools(&["qemu-img", "nbdinfo", "nbdcopy"]) {
        return;
    }
    for chunking in [Chunking::default(), Chunking::Fixed { block_size: 65536 }] {
        let env = Env::new();
        let store = env.create_with(true, chunking);
        let img = env.path("disk.img");
        let data = image(&img, 11);
        let small = env.path("small.img");
        std::fs::write(&small, alike_testing::Rng::new(5).noise(3 * MIB as usize + 1234)).unwrap();
        let v = store.backup_images("vm", &[&img, &small], &Default::default()).unwrap().version;

        let (_, report) = serving(&store, &v, local(&store), |l| {
            let uri = &l.exports[0].uri;
            assert!(uri.ends_with("/disk0") && l.exports[0].default && !l.exports[0].writable, "{l:?}");
            // qemu-img compare and convert, from nbd://.
            run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(uri).arg(&img));
            let out = env.path("convert.img");
            run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw"]).arg(uri).arg(&out));
            assert!(std::fs::read(&out).unwrap() == data, "{chunking}: qemu-img convert");
            // The default export is the chosen disk.
            run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&l.uri).arg(&img));
            // nbdinfo --map: every data region is data, and the zeroes are holes.
            let m = map(uri);
            let hole_bytes: u64 = m.iter().filter(|e| e.2).map(|e| e.1).sum();
            let zero_bytes = SIZE - DATA.iter().map(|d| d.1).sum::<u64>();
            assert!(hole_bytes >= zero_bytes * 9 / 10 && hole_bytes <= zero_bytes, "{chunking}: {m:?}");
            for (at, len) in DATA {
                assert!(
                    !m.iter().any(|&(o, l, hole)| hole && o < at + len && at < o + l),
                    "{chunking}: data at {at} reported as a hole: {m:?}"
                );
            }
            // nbdcopy, 4 connections (multi-conn), and two clients at once.
            let copy = env.path("nbdcopy.img");
            let compare = |src: &str, reference: &Path| {
                let mut c = Command::new("qemu-img");
                c.args(["compare", "-q", "-f", "raw", "-F", "raw"]).arg(src).arg(reference).spawn().unwrap()
            };
            let mut c1 = Command::new("nbdcopy").args(["--connections=4"]).arg(uri).arg(&copy).spawn().unwrap();
            let mut c2 = compare(uri, &img);
            assert!(c1.wait().unwrap().success() && c2.wait().unwrap().success());
            assert!(std::fs::read(&copy).unwrap() == data, "{chunking}: nbdcopy");
        });
        let report = report.unwrap();
        assert!(report.connections >= 7, "{report:?}");
        assert!(report.bytes_read < 12 * SIZE, "holes travel as holes: {report:?}");
        assert!(report.store_bytes_read > 0 && report.overlay_kept.is_none());

        // Every disk: disk0 and disk1 by name, no default export.
        let (_, r) = serving(&store, &v, local(&store).all_disks(), |l| {
            assert_eq!(l.exports.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["disk0", "disk1"]);
            run(Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(&l.exports[1].uri)
                .arg(&small));
            let out = Command::new("nbdinfo").arg(&l.uri).output().unwrap();
            assert!(!out.status.success(), "no default export with every disk served");
        });
        r.unwrap();
    }
}

#[test]
fn a_unix_socket_export_and_options_out_of_range() {
    if !tools(&["qemu-img"]) {
        return;
    }
    let env = Env::new();
    let store = env.create_fixed(false);
    let img = env.path("d.img");
    std::fs::write(&img, alike_testing::Rng::new(2).noise(5 * MIB as usize)).unwrap();
    let v = store.backup_images("vm", &[&img], &Default::default()).unwrap().version;
    let sock = env.path("nbd.sock");
    let (_, r) = serving(&store, &v, NbdOptions::default().listen_unix(&sock), |l| {
        assert!(l.uri.starts_with("nbd+unix://"), "{}", l.uri);
        run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&l.exports[0].uri).arg(&img));
    });
    r.unwrap();
    assert!(!sock.exists());
    let bad = |o: NbdOptions| store.serve_nbd(&v, &o).unwrap_err();
    let e = bad(local(&store).disk(3));
    assert!(e.kind() == ErrorKind::InvalidArgument && e.to_string().contains("no disk 3"), "{e}");
    for (o, what) in [
        (local(&store).cache_size(1 << 20), "frame cache"),
        (local(&store).readahead(200 << 20), "read-ahead"),
        (local(&store).max_connections(65), "connections"),
        (local(&store).all_disks().writable_overlay(env.path("o")), "one disk"),
        (local(&store).keep_overlay(true), "overlay"),
    ] {
        let e = bad(o);
        assert!(e.kind() == ErrorKind::InvalidArgument && e.to_string().contains(what), "{what}: {e}");
    }
    std::fs::write(env.path("nbd2.sock"), b"x").unwrap();
    let e = bad(NbdOptions::default().listen_unix(env.path("nbd2.sock")));
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
}

#[test]
fn overlay_writes_are_served_back_and_the_version_never_changes() {
    if !tools(&["qemu-img", "qemu-io", "nbdinfo"]) {
        return;
    }
    for chunking in [Chunking::default(), Chunking::Fixed { block_size: 65536 }] {
        let env = Env::new();
        let store = env.create_with(false, chunking);
        let img = env.path("disk.img");
        let data = image(&img, 21);
        let v = store.backup_images("vm", &[&img], &Default::default()).unwrap().version;
        let overlay = env.path("overlay.alk");
        let opts = || local(&store).writable_overlay(&overlay);
        // Write: a pattern over data and hole (partial blocks), zeroes over data, a flush.
        let (_, r) = serving(&store, &v, opts().keep_overlay(true), |l| {
            let uri = &l.exports[0].uri;
            assert!(l.exports[0].writable);
            run(Command::new("qemu-io")
                .args([
                    "-f",
                    "raw",
                    "-c",
                    "write -P 0x5a 4000000 300000",
                    "-c",
                    "write -z 1048576 65536",
                    "-c",
                    "flush",
                ])
                .arg(uri));
            let out = run(Command::new("qemu-io")
                .args(["-f", "raw", "-c", "read -P 0x5a 4000000 300000", "-c", "read -P 0 1048576 65536"])
                .arg(uri));
            assert!(!out.contains("fail"), "{out}");
            // The written range is data now; the rest of the hole still a hole.
            let m = map(uri);
            assert!(!m.iter().any(|&(o, l, hole)| hole && o < 4_300_000 && 4_000_000 < o + l), "{m:?}");
            assert!(m.iter().any(|&(o, _, hole)| hole && o >= 4_300_000), "{m:?}");
        });
        let r = r.unwrap();
        assert_eq!(r.bytes_written, 300_000, "{r:?}");
        assert_eq!(r.overlay_kept.as_deref(), Some(overlay.as_path()));
        // The kept overlay is served again, with the writes.
        let mut expect = data.clone();
        expect[4_000_000..4_300_000].fill(0x5a);
        expect[1 << 20..(1 << 20) + 65536].fill(0);
        let want = env.path("want.img");
        std::fs::write(&want, &expect).unwrap();
        let (_, r) = serving(&store, &v, opts().keep_overlay(true), |l| {
            run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&l.exports[0].uri).arg(&want));
        });
        r.unwrap();
        // Without keep: an existing file is refused; a new one is deleted at the end.
        assert_eq!(store.serve_nbd(&v, &opts()).unwrap_err().kind(), ErrorKind::AlreadyExists);
        std::fs::remove_file(&overlay).unwrap();
        let (_, r) = serving(&store, &v, opts(), |l| {
            run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 7 0 512"]).arg(&l.exports[0].uri));
        });
        assert!(r.unwrap().overlay_kept.is_none() && !overlay.exists());
        // The version itself never changed.
        let out = env.path("restored.img");
        store.restore_to_file(&v, 0, &out, &Default::default()).unwrap();
        assert!(std::fs::read(&out).unwrap() == data, "{chunking}: the version is unchanged");
        assert!(store.verify(&alike::VerifyOptions::default().full(true)).unwrap().ok());
    }
}

#[test]
fn an_overlay_of_another_version_or_a_damaged_one_is_refused() {
    let env = Env::new();
    let store = env.create(false);
    let a = env.path("a.img");
    std::fs::write(&a, alike_testing::Rng::new(1).noise(MIB as usize)).unwrap();
    let v1 = store.backup_images("vm", &[&a], &Default::default()).unwrap().version;
    std::fs::write(&a, alike_testing::Rng::new(2).noise(MIB as usize)).unwrap();
    let v2 = store.backup_images("vm", &[&a], &Default::default()).unwrap().version;
    let overlay = env.path("o.alk");
    let (_, r) = serving(&store, &v1, local(&store).writable_overlay(&overlay).keep_overlay(true), |_| ());
    r.unwrap();
    let head = std::fs::read(&overlay).unwrap();
    assert_eq!(&head[..8], b"\x89ALKOV\r\n");
    let e = store.serve_nbd(&v2, &local(&store).writable_overlay(&overlay).keep_overlay(true)).unwrap_err();
    assert!(e.to_string().contains("another disk or version"), "{e}");
    // A bitmap that does not match its checksum (a server that died before writing it).
    let mut bytes = head.clone();
    bytes[4096] ^= 1;
    std::fs::write(&overlay, &bytes).unwrap();
    let e = store.serve_nbd(&v1, &local(&store).writable_overlay(&overlay).keep_overlay(true)).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
}

/// A long export holds its version only: GC deletes the rest of what it
/// condemns meanwhile, keeps what the export reads; prune keeps the version
/// and forget refuses it.
#[test]
fn gc_goes_on_while_a_version_is_exported() {
    let env = Env::new();
    let store = env.create(true);
    let a = env.path("a.img");
    let data = image(&a, 31);
    let b = env.path("b.img");
    std::fs::write(&b, alike_testing::Rng::new(99).noise(8 * MIB as usize)).unwrap();
    let va = store.backup_images("exported", &[&a], &Default::default()).unwrap().version;
    let vb = store.backup_images("other", &[&b], &Default::default()).unwrap().version;
    let (_, r) = serving(&store, &va, local(&store), |l| {
        // A second handle (another process, another cache) does maintenance meanwhile.
        let admin = Store::builder().cache_dir(env.path("cache-2")).passphrase("pw").open(env.path("store")).unwrap();
        let held: Vec<_> = admin.locks().unwrap().into_iter().filter(|l| l.info.versions.is_some()).collect();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].info.versions.as_deref(), Some(&[va.id.clone()][..]));
        let e = admin.forget(&va.id).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        let pruned = admin.prune(Some("exported"), &alike::RetentionPolicy::default().last(1), false).unwrap();
        assert!(pruned.removed.is_empty());
        admin.forget(&vb.id).unwrap();
        let gc = admin.gc(&Default::default()).unwrap();
        assert!(gc.deleted > 0 && gc.deferred == 0, "GC deletes the other VM's data during the export: {gc:?}");
        // The export still serves its version bit-exact.
        if tools(&["qemu-img"]) {
            let out = env.path("after-gc.img");
            run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw"]).arg(&l.exports[0].uri).arg(&out));
            assert!(std::fs::read(&out).unwrap() == data);
        }
    });
    r.unwrap();
    // The hold ends with the session.
    assert!(store.locks().unwrap().iter().all(|l| l.info.versions.is_none()));
    store.forget(&va.id).unwrap();
}

/// GC repacks a pack the export reads from (its other chunks died) and
/// deletes it: the export's next read of those chunks meets the missing
/// pack, syncs its cache, and finds them in the new pack.
#[test]
fn an_export_follows_chunks_that_gc_repacked_under_it() {
    if !tools(&["qemu-img"]) {
        return;
    }
    let env = Env::new();
    // Fixed blocks and one worker: v1's first pack holds its first ~32 MiB, in order.
    let store = env.create_fixed(false);
    let one = || alike::BackupOptions::default().threads(1);
    let img = env.path("d.img");
    let mut data = alike_testing::Rng::new(41).noise(40 * MIB as usize);
    std::fs::write(&img, &data).unwrap();
    let v1 = store.backup_images("vm", &[&img], &one()).unwrap().version;
    // Most of the disk changes: v1's first pack keeps a few chunks v2 still uses.
    alike_testing::Rng::new(42).fill(&mut data[..28 * MIB as usize]);
    std::fs::write(&img, &data).unwrap();
    let v2 = store.backup_images("vm", &[&img], &one()).unwrap().version;
    // A cache too small for the disk: reads after the GC go to the store.
    let opts = local(&store).cache_size(8 << 20).readahead(0);
    let (_, r) = serving(&store, &v2, opts, |l| {
        let uri = &l.exports[0].uri;
        let compare = || {
            let out =
                Command::new("qemu-img").args(["compare", "-q", "-f", "raw", "-F", "raw"]).arg(uri).arg(&img).output();
            assert!(out.unwrap().status.success(), "the export reads its version bit-exact");
        };
        // Nothing is read before the GC: the export's index cache still
        // names the old pack, which it never opened (a local store keeps
        // recently read packs open, and a deleted pack still reads through
        // an open handle: on object storage it would not).
        let admin = Store::builder().cache_dir(env.path("cache-2")).open(env.path("store")).unwrap();
        admin.forget(&v1.id).unwrap();
        let gc = admin.gc(&Default::default()).unwrap();
        assert!(gc.repacked >= 1 && gc.deleted >= 1 && gc.deferred == 0, "{gc:?}");
        compare();
    });
    r.unwrap();
}

/// nbdfuse (libnbd's FUSE client) shows the export as a file in a
/// directory: the kernel reads it through FUSE, by whatever sizes and
/// offsets it likes, and the file equals the disk. Needs /dev/fuse (root
/// here, and in CI).
#[test]
fn nbdfuse_shows_the_export_as_a_file_equal_to_the_disk() {
    if !tools(&["nbdfuse", "fusermount3"]) {
        return;
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_err() {
        alike_testing::skip("/dev/fuse cannot be opened here (FUSE needs it)");
        return;
    }
    let env = Env::new();
    let store = env.create_with(true, Chunking::default());
    let img = env.path("disk.img");
    let data = image(&img, 23);
    let v = store.backup_images("vm", &[&img], &Default::default()).unwrap().version;
    let (_, report) = serving(&store, &v, local(&store), |l| {
        let mnt = env.path("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let pid = env.path("nbdfuse.pid");
        let mut child =
            Command::new("nbdfuse").args(["-r", "-P"]).arg(&pid).arg(&mnt).arg(&l.exports[0].uri).spawn().unwrap();
        // The pid file appears once the mount is ready.
        let t0 = std::time::Instant::now();
        while !pid.exists() {
            if let Some(s) = child.try_wait().unwrap() {
                panic!("nbdfuse exited before mounting: {s}");
            }
            assert!(t0.elapsed() < std::time::Duration::from_secs(30), "nbdfuse never mounted");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let read = std::fs::read(mnt.join("nbd"));
        let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
        let _ = child.wait();
        let read = read.expect("the export's file in the nbdfuse mount");
        assert!(read.len() == data.len() && read == data, "nbdfuse: the file differs from the disk");
    });
    let report = report.unwrap();
    // Holes travel as holes: the data regions were read, at least.
    assert!(report.connections >= 1 && report.bytes_read >= DATA.iter().map(|d| d.1).sum::<u64>(), "{report:?}");
}
