//! Every numeric option has a range, checked by the facade for every
//! operation (so every front-end gets it); what is not a disk is not backed
//! up, and an empty disk only when asked for.

use std::time::{Duration, Instant};

use alike::{
    BackupOptions, ErrorKind, ImageFormat, MAX_THREADS, MaintenanceOptions, MemSource, RestoreOptions, Store,
    VaultOptions, VerifyOptions, VmInfo,
};

use super::util::Env;

fn invalid(r: alike::Result<impl std::fmt::Debug>, needle: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains(needle), "{needle:?} not in: {e}");
}

#[test]
fn thread_counts_above_the_maximum_are_refused_by_every_operation() {
    let env = Env::new();
    let store = env.create(false);
    let disk = MemSource { label: "d".into(), data: vec![1u8; 200_000] };
    let v = store.backup(VmInfo::named("vm"), &[&disk], &BackupOptions::default().threads(2)).unwrap().version;
    let started = Instant::now();
    for n in [MAX_THREADS + 1, 1_000_000, usize::MAX] {
        let msg = format!("{n} worker threads: at most {MAX_THREADS}");
        invalid(store.backup(VmInfo::named("vm"), &[&disk], &BackupOptions::default().threads(n)), &msg);
        invalid(store.backup_images("vm", &[env.path("nothing")], &BackupOptions::default().threads(n)), &msg);
        invalid(store.restore_to_file(&v, 0, env.path("r.img"), &RestoreOptions::default().threads(n)), &msg);
        invalid(store.verify(&VerifyOptions::default().threads(n)), &msg);
        invalid(store.gc(&MaintenanceOptions::default().threads(n)), &msg);
        invalid(store.rebuild_index(&MaintenanceOptions::default().threads(n)), &msg);
        let vault = Store::builder().no_encryption().cache_dir(env.path("vc")).create(env.path(&format!("v{n}")));
        invalid(store.vault(&vault.unwrap(), &VaultOptions::default().threads(n)), &msg);
    }
    assert!(started.elapsed() < Duration::from_secs(30), "refused, not attempted");
    assert!(!env.path("r.img").exists());
    // The maximum itself is accepted.
    store.verify(&VerifyOptions::default().threads(MAX_THREADS)).unwrap();
}

#[test]
fn bandwidth_and_compression_have_ranges() {
    let env = Env::new();
    let store = env.create(false);
    let disk = MemSource { label: "d".into(), data: vec![1u8; 100_000] };
    invalid(
        store.backup(VmInfo::named("vm"), &[&disk], &BackupOptions::default().compression_level(Some(99))),
        "zstd level 99",
    );
    store.backup(VmInfo::named("vm"), &[&disk], &BackupOptions::default().compression_level(Some(-5))).unwrap();
    let vault = Store::builder().no_encryption().cache_dir(env.path("vc")).create(env.path("vault")).unwrap();
    invalid(store.vault(&vault, &VaultOptions::default().bandwidth_limit(0)), "at least 1024");
    let mut b = Store::builder();
    b.no_encryption().cache_dir(env.path("c2")).compression_level(Some(1000));
    invalid(b.create(env.path("s2")), "zstd level 1000");
}

#[test]
fn devices_fifos_and_folders_are_not_disks() {
    let env = Env::new();
    let store = env.create(false);
    let fifo = env.path("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for (path, what) in [
        ("/dev/zero".into(), "a character device"),
        ("/dev/urandom".into(), "a character device"),
        ("/dev/null".into(), "a character device"),
        (fifo.clone(), "a FIFO"),
        (env.path("store"), "a folder"),
    ] {
        for format in [None, Some(ImageFormat::Raw), Some(ImageFormat::Vhdx)] {
            let e = alike::open_image(&path, format).map(drop).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
            assert!(e.to_string().contains(what) && e.to_string().contains("not a disk"), "{e}");
        }
        let mut o = BackupOptions::default().allow_empty(true);
        if path == fifo {
            o = o.image_format(ImageFormat::Raw);
        }
        invalid(store.backup_images("vm", &[&path], &o), what);
    }
    invalid(ImageFormat::detect(&fifo), "a FIFO");
    assert!(store.versions(None).unwrap().is_empty());
}

#[test]
fn an_empty_disk_only_when_asked_for() {
    let env = Env::new();
    let store = env.create(false);
    let empty = env.path("empty.img");
    std::fs::write(&empty, b"").unwrap();
    invalid(store.backup_images("vm", &[&empty], &BackupOptions::default()), "empty disk (0 bytes)");
    let nothing = MemSource { label: "nothing".into(), data: Vec::new() };
    invalid(store.backup(VmInfo::named("vm"), &[&nothing], &BackupOptions::default()), "nothing is an empty disk");
    assert!(store.versions(None).unwrap().is_empty());
    let r = store.backup_images("vm", &[&empty], &BackupOptions::default().allow_empty(true)).unwrap();
    assert_eq!(r.version.disks[0].size, 0);
    // A VHDX of virtual size 0 is an empty disk too.
    let vhdx = env.path("zero.vhdx");
    alike::create_image(&vhdx, ImageFormat::Vhdx, 0).unwrap().finish(0).unwrap();
    assert_eq!(alike::open_image(&vhdx, None).unwrap().size(), 0);
    invalid(store.backup_images("vm", &[&vhdx], &BackupOptions::default()), "zero.vhdx is an empty disk");
}
