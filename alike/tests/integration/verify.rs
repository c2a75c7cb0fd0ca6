//! verify: all good on a sound store; each kind of damage detected, named,
//! and mapped to the versions and byte ranges it breaks; nothing else flagged.

use alike::{BackupOptions, VerifyOptions};
use alike_testing::{sha256_file, sparse_image};

use super::util::{Env, restore_sha};

struct Two {
    env: Env,
    a: alike::Version,
    b: alike::Version,
    imgs: [std::path::PathBuf; 2],
}

/// Two VMs with no data in common (b's image is separate noise).
fn two_vms() -> Two {
    let env = Env::new();
    let store = env.create(true);
    let (ia, ib) = (env.path("a.img"), env.path("b.img"));
    sparse_image(&ia, 8 << 20, 20, 1);
    sparse_image(&ib, 4 << 20, 10, 2);
    let a = store.backup_images("vm-a", &[&ia], &BackupOptions::default()).unwrap().version;
    let b = store.backup_images("vm-b", &[&ib], &BackupOptions::default()).unwrap().version;
    Two { env, a, b, imgs: [ia, ib] }
}

fn packs(env: &Env) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(env.path("store/packs")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

#[test]
fn a_sound_store_verifies_quick_and_full_and_records_it() {
    let t = two_vms();
    let store = t.env.open();
    for full in [false, true] {
        let r = store.verify(&VerifyOptions::default().full(full)).unwrap();
        assert!(r.ok(), "{:?}", r.damaged);
        assert_eq!(r.versions, 2);
        assert!(r.chunks > 10);
        if full {
            assert!(r.bytes_read > 1 << 20, "full verify read {} bytes", r.bytes_read);
        }
    }
    let rec = store.verifications().unwrap();
    assert_eq!(rec[&t.a.id].depth, "full");
    assert!(rec[&t.a.id].ok && rec[&t.b.id].ok);
    // Scopes.
    assert_eq!(store.verify(&VerifyOptions::default().vm("vm-a")).unwrap().versions, 1);
    assert_eq!(store.verify(&VerifyOptions::default().version(&t.b.id[..8])).unwrap().versions, 1);
    assert!(store.verify(&VerifyOptions::default().vm("nope")).is_err());
}

#[test]
fn a_flipped_byte_is_found_by_full_verify_and_named() {
    let t = two_vms();
    // Damage the pack holding vm-b's data (the smaller image was written last).
    let p = packs(&t.env);
    let store = t.env.open();
    let mut hit = None;
    for pack in &p {
        let good = std::fs::read(pack).unwrap();
        let mut bad = good.clone();
        bad[100] ^= 0x01;
        std::fs::write(pack, &bad).unwrap();
        let r = store.verify(&VerifyOptions::default().full(true)).unwrap();
        std::fs::write(pack, &good).unwrap();
        if !r.ok() {
            hit = Some((pack.clone(), r));
            break;
        }
    }
    let (pack, r) = hit.expect("flipping byte 100 of some pack must be detected");
    let name = pack.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        r.damaged.iter().any(|d| d.object.ends_with(&name) && d.reason.contains("does not match its name")),
        "{:#?}",
        r.damaged
    );
    let chunk_damage: Vec<_> = r.damaged.iter().filter(|d| d.chunk.is_some()).collect();
    assert!(!chunk_damage.is_empty());
    for d in &chunk_damage {
        assert!(d.reason.contains("authentication"), "{}", d.reason);
        assert!(!d.affects.is_empty(), "a damaged chunk names what it breaks");
        for a in &d.affects {
            assert!(a.ranges.iter().all(|(x, y)| x < y));
        }
    }
    // Restored: all good again; unaffected versions restore throughout.
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
    assert_eq!(restore_sha(&store, &t.a, t.env.dir.path()), vec![sha256_file(&t.imgs[0])]);
}

#[test]
fn corruption_matrix() {
    // Each case damages one object, checks verify names it, then repairs it.
    let t = two_vms();
    let store = t.env.open();
    let p = packs(&t.env);
    let first = p[0].clone();
    let good = std::fs::read(&first).unwrap();

    // Truncated pack: quick verify already sees it (trailer unreadable).
    std::fs::write(&first, &good[..good.len() / 2]).unwrap();
    let r = store.verify(&VerifyOptions::default()).unwrap();
    assert!(!r.ok());
    assert!(
        r.damaged.iter().all(|d| d.object.contains(&*first.file_name().unwrap().to_string_lossy())),
        "{:#?}",
        r.damaged
    );
    assert!(r.damaged.iter().any(|d| !d.affects.is_empty()));
    std::fs::write(&first, &good).unwrap();

    // Deleted pack.
    std::fs::remove_file(&first).unwrap();
    let r = store.verify(&VerifyOptions::default()).unwrap();
    assert!(r.damaged.iter().any(|d| d.reason == "pack is missing"), "{:#?}", r.damaged);
    std::fs::write(&first, &good).unwrap();
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());

    // Corrupt manifest: named, and it breaks exactly that version.
    let man = t.env.path(&format!("store/versions/{}", t.a.id));
    let mgood = std::fs::read(&man).unwrap();
    let mut mbad = mgood.clone();
    let n = mbad.len();
    mbad[n - 5] ^= 0x10;
    std::fs::write(&man, &mbad).unwrap();
    let r = store.verify(&VerifyOptions::default()).unwrap();
    assert_eq!(r.damaged.len(), 1, "{:#?}", r.damaged);
    assert_eq!(r.damaged[0].object, format!("versions/{}", t.a.id));
    assert_eq!(r.damaged[0].affects[0].version, t.a.id);
    std::fs::write(&man, &mgood).unwrap();
    // The other VM's version was never affected.
    assert_eq!(restore_sha(&store, &t.b, t.env.dir.path()), vec![sha256_file(&t.imgs[1])]);
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
}

#[test]
fn partial_restore_writes_what_it_can_and_lists_what_verify_reports() {
    let t = two_vms();
    let store = t.env.open();
    // Damage one frame in the middle of a pack that holds vm-a's data.
    let mut damaged = false;
    for pack in packs(&t.env) {
        let good = std::fs::read(&pack).unwrap();
        let mut bad = good.clone();
        bad[good.len() / 3] ^= 0x5a;
        std::fs::write(&pack, &bad).unwrap();
        let r = store.verify(&VerifyOptions::default().full(true).version(&t.a.id)).unwrap();
        if r.damaged.iter().any(|d| d.affects.iter().any(|a| a.version == t.a.id)) {
            damaged = true;
            break;
        }
        std::fs::write(&pack, &good).unwrap();
    }
    assert!(damaged, "no pack damage reached vm-a");
    let report = store.verify(&VerifyOptions::default().full(true).version(&t.a.id)).unwrap();
    let broken: Vec<(u64, u64)> = report
        .damaged
        .iter()
        .flat_map(|d| d.affects.iter())
        .filter(|a| a.version == t.a.id)
        .flat_map(|a| a.ranges.clone())
        .collect();

    // Without the option: fails, leaves nothing.
    let out = t.env.path("out.img");
    assert!(store.restore_to_file(&t.a, 0, &out, &Default::default()).is_err());
    assert!(!out.exists());
    // With it: the file is written; the failed ranges are what verify reported, zero-filled; the rest is exact.
    let r = store.restore_to_file(&t.a, 0, &out, &alike::RestoreOptions::default().partial(true)).unwrap();
    assert!(!r.failed_ranges.is_empty());
    assert!(r.first_error.as_deref().unwrap().contains("corrupt"), "{:?}", r.first_error);
    let merged = alike_core::merge_ranges(broken);
    assert_eq!(r.failed_ranges, merged, "partial restore and verify disagree on what is broken");
    let got = std::fs::read(&out).unwrap();
    let want = std::fs::read(&t.imgs[0]).unwrap();
    assert_eq!(got.len(), want.len());
    let mut cursor = 0usize;
    for (a, b) in &r.failed_ranges {
        assert_eq!(got[cursor..*a as usize], want[cursor..*a as usize]);
        assert!(got[*a as usize..*b as usize].iter().all(|&x| x == 0));
        cursor = *b as usize;
    }
    assert_eq!(got[cursor..], want[cursor..]);
}

#[test]
fn a_corrupt_index_segment_does_not_lock_the_user_out() {
    let t = two_vms();
    let seg = std::fs::read_dir(t.env.path("store/index")).unwrap().next().unwrap().unwrap().path();
    let mut b = std::fs::read(&seg).unwrap();
    let n = b.len();
    b[n / 2] ^= 0xff;
    std::fs::write(&seg, b).unwrap();
    std::fs::remove_dir_all(t.env.cache()).unwrap();
    let store = t.env.open(); // opens despite the damage
    let r = store.verify(&VerifyOptions::default()).unwrap();
    let name = seg.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        r.damaged.iter().any(|d| d.object.ends_with(&name) && d.reason.contains("rebuild-index")),
        "{:#?}",
        r.damaged
    );
    let r = store.rebuild_index(&alike::MaintenanceOptions::default()).unwrap();
    assert!(r.packs_indexed >= 2 && r.damaged_packs.is_empty());
    let store = t.env.open();
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
    assert_eq!(restore_sha(&store, &t.a, t.env.dir.path()), vec![sha256_file(&t.imgs[0])]);
}

/// One damaged manifest (a flipped byte) and a stray file in `versions/`
/// never stop the store: versions lists the rest, a backup of the VM reads
/// in full with the reason recorded, verify names the damaged object
/// (the whole version, no absurd byte range), gc runs and deletes nothing,
/// and forget removes both.
#[test]
fn a_damaged_manifest_never_stops_the_store() {
    let env = super::util::Env::new();
    let store = env.create(true);
    let img = env.path("d.img");
    std::fs::write(&img, alike_testing::Rng::new(41).noise(1 << 20)).unwrap();
    let v1 = store.backup_images("web", &[&img], &alike::BackupOptions::default()).unwrap().version;
    let v2 = store.backup_images("web", &[&img], &alike::BackupOptions::default()).unwrap().version;
    let m2 = env.path(&format!("store/versions/{}", v2.id));
    let mut b = std::fs::read(&m2).unwrap();
    b[40] ^= 1;
    std::fs::write(&m2, b).unwrap();
    std::fs::write(env.path("store/versions/notes.txt"), b"left here by someone").unwrap();

    let ids: Vec<String> = store.versions(None).unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(ids, vec![v1.id.clone()]);
    let damaged: Vec<String> = store.damaged_versions().unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(damaged.len(), 2, "{damaged:?}");

    let r = store.backup_images("web", &[&img], &alike::BackupOptions::default()).unwrap();
    let why = r.version.disks[0].fallback_reason.as_deref().unwrap_or_default();
    assert!(why.contains("damaged") && !r.version.disks[0].incremental, "{why:?}");

    let report = store.verify(&VerifyOptions::default()).unwrap();
    assert!(!report.ok());
    let d = report.damaged.iter().find(|d| d.object == format!("versions/{}", v2.id)).expect("named");
    assert!(d.affects.iter().all(|a| a.ranges.is_empty()), "{:?}", d.affects);

    let packs = std::fs::read_dir(env.path("store/packs")).unwrap().count();
    let gc = store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert_eq!(gc.damaged_versions.len(), 2);
    assert_eq!((gc.condemned, gc.deleted), (0, 0));
    assert_eq!(std::fs::read_dir(env.path("store/packs")).unwrap().count(), packs);

    store.forget(&v2.id[..12]).unwrap();
    store.forget("notes.txt").unwrap();
    assert!(store.damaged_versions().unwrap().is_empty());
    assert!(store.verify(&VerifyOptions::default()).unwrap().ok());
    assert_eq!(restore_sha(&store, &v1, env.dir.path()), vec![sha256_file(&img)]);
}

/// `verify --full` checks the stored index segments, not only the warm
/// cache built from them: a corrupt segment is damage that names the
/// versions a cold host could not restore, until `rebuild-index`.
#[test]
fn full_verify_checks_index_segments_with_a_warm_cache() {
    let env = super::util::Env::new();
    let store = env.create(true);
    let img = env.path("d.img");
    std::fs::write(&img, alike_testing::Rng::new(43).noise(2 << 20)).unwrap();
    let v = store.backup_images("web", &[&img], &alike::BackupOptions::default()).unwrap().version;
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
    for e in std::fs::read_dir(env.path("store/index")).unwrap() {
        let p = e.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 5] ^= 0x40;
        std::fs::write(&p, b).unwrap();
    }
    // The same handle: its cache still knows every chunk.
    let r = store.verify(&VerifyOptions::default().full(true)).unwrap();
    assert!(!r.ok(), "a corrupt index segment passed a full verify");
    assert!(r.damaged.iter().any(|d| d.object.starts_with("index/")), "{:#?}", r.damaged);
    assert!(r.damaged.iter().any(|d| d.affects.iter().any(|a| a.version == v.id)), "{:#?}", r.damaged);
    // Quick verify trusts the cache; full is the one that reads the segments.
    store.rebuild_index(&alike::MaintenanceOptions::default()).unwrap();
    let r = store.verify(&VerifyOptions::default().full(true)).unwrap();
    assert!(r.ok(), "{:#?}", r.damaged);
}

/// A backup after a pack was lost never deduplicates against it nor carries
/// its parent's blocks from it: it stores the chunks again, and the new
/// version restores while verify names the old one.
#[test]
fn a_backup_after_a_lost_pack_heals_instead_of_trusting_the_index() {
    let env = super::util::Env::new();
    let store = env.create(true);
    let disk = alike_testing::TrackedDisk::new(alike_testing::Rng::new(47).noise(3 << 20));
    let v1 = store.backup(alike::VmInfo::named("web"), &[&disk], &alike::BackupOptions::default()).unwrap().version;
    for d in std::fs::read_dir(env.path("store/packs")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
    }
    // Nothing changed on the disk: an incremental would carry everything from v1.
    let r = store.backup(alike::VmInfo::named("web"), &[&disk], &alike::BackupOptions::default()).unwrap();
    let d = &r.version.disks[0];
    assert!(!d.incremental, "carried blocks from a version whose packs are gone");
    assert!(d.fallback_reason.as_deref().unwrap_or_default().contains("missing"), "{d:?}");
    assert!(r.new_bytes >= 3 << 20, "the chunks were not stored again: {} new bytes", r.new_bytes);
    let out = env.path("healed.img");
    store.restore_to_file(&r.version, 0, &out, &alike::RestoreOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), disk.bytes());
    // The same chunks stored again heal v1 too: verify finds the store whole.
    let report = store.verify(&VerifyOptions::default().full(true)).unwrap();
    assert!(report.ok(), "{:#?}", report.damaged);
    store.restore_to_file(&v1, 0, env.path("v1.img"), &alike::RestoreOptions::default()).unwrap();
    assert_eq!(std::fs::read(env.path("v1.img")).unwrap(), disk.bytes());
    // gc drops the lost packs from the index, so no cold cache points at them.
    let gc = store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert!(!gc.lost_packs.is_empty(), "{gc:?}");
    assert!(gc.damaged_versions.is_empty(), "{gc:?}");
    let cold = alike::Store::builder().passphrase("pw").cache_dir(env.path("cold")).open(env.path("store")).unwrap();
    cold.restore_to_file(&v1, 0, env.path("cold.img"), &alike::RestoreOptions::default()).unwrap();
    assert_eq!(std::fs::read(env.path("cold.img")).unwrap(), disk.bytes());
    // A second image backed up from scratch after the loss dedups only against intact packs.
    let img = env.path("same.img");
    std::fs::write(&img, disk.bytes()).unwrap();
    let v3 = store.backup_images("other", &[&img], &alike::BackupOptions::default()).unwrap().version;
    store.restore_to_file(&v3, 0, env.path("v3.img"), &alike::RestoreOptions::default()).unwrap();
}

/// gc with data lost and not healed: it runs, names the versions it cannot
/// read, and deletes nothing.
#[test]
fn gc_with_lost_data_deletes_nothing_and_says_why() {
    let env = super::util::Env::new();
    let store = env.create(false);
    let img = env.path("d.img");
    std::fs::write(&img, alike_testing::Rng::new(53).noise(1 << 20)).unwrap();
    store.backup_images("web", &[&img], &alike::BackupOptions::default()).unwrap();
    let other = env.path("e.img");
    std::fs::write(&other, alike_testing::Rng::new(54).noise(1 << 20)).unwrap();
    store.backup_images("db", &[&other], &alike::BackupOptions::default()).unwrap();
    let first_pack = std::fs::read_dir(env.path("store/packs"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .next()
        .unwrap();
    std::fs::remove_file(&first_pack).unwrap();
    let gc = store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert_eq!(gc.lost_packs.len(), 1, "{gc:?}");
    assert!(!gc.damaged_versions.is_empty(), "{gc:?}");
    assert_eq!((gc.condemned, gc.deleted), (0, 0), "{gc:?}");
}
