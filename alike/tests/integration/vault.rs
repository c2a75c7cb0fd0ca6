//! Offsite vaulting: copy versions to a second store with its own key,
//! incrementally, and restore from the vault alone.

use alike::{BackupOptions, RestoreOptions, RetentionPolicy, Store, VaultOptions, VerifyOptions};
use alike_testing::{Rng, sha256_file, sparse_image};

use super::util::Env;

fn vault_store(env: &Env, cache: &str) -> Store {
    Store::builder()
        .passphrase("vault pw")
        .insecure_fast_kdf()
        .cache_dir(env.path(cache))
        .create(env.path("vault"))
        .unwrap()
}

/// Overwrites `n` scattered 4 KiB pieces of the file with random bytes.
fn scribble(path: &std::path::Path, n: usize, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        rng.fill(&mut buf);
        f.write_all_at(&buf, rng.below(len / 4096) * 4096).unwrap();
    }
}

#[test]
fn vault_is_incremental_and_restores_alone() {
    let env = Env::new();
    let site = env.create(true);
    let (d0, d1) = (env.path("d0.img"), env.path("d1.img"));
    sparse_image(&d0, 16 << 20, 30, 1);
    sparse_image(&d1, 8 << 20, 20, 2);
    let mut expect = Vec::new();
    let v1 = site.backup_images("web", &[&d0, &d1], &BackupOptions::default().time_ms(1_000)).unwrap().version;
    expect.push((v1.id.clone(), sha256_file(&d0), sha256_file(&d1)));
    let vault = vault_store(&env, "vcache");
    let r = site.vault(&vault, &VaultOptions::default()).unwrap();
    assert_eq!(r.copied.len(), 1);
    let full_sent = r.sent_bytes;
    assert!(full_sent > 0);
    // ~2% of blocks change (40 × 4 KiB pieces over 24 MiB touch ≤ 40 of 384 blocks).
    scribble(&d0, 25, 7);
    scribble(&d1, 15, 8);
    let v2 = site.backup_images("web", &[&d0, &d1], &BackupOptions::default().time_ms(2_000)).unwrap().version;
    expect.push((v2.id.clone(), sha256_file(&d0), sha256_file(&d1)));
    let r2 = site.vault(&vault, &VaultOptions::default()).unwrap();
    assert_eq!(r2.copied.len(), 1);
    assert_eq!(r2.already, vec![v1.id.clone()]);
    // Only the blocks that differ from the vault's previous copy are read.
    eprintln!("vault read {} sent {}", r2.read_bytes, r2.sent_bytes);
    assert!(r2.read_bytes <= 40 * 65536, "read {} for 40 changed pieces", r2.read_bytes);
    assert!(r2.sent_bytes < full_sent / 5, "sent {} after a 2% change (full: {full_sent})", r2.sent_bytes);
    let vd = vault.version(&r2.copied[0].vault, None).unwrap();
    assert!(vd.disks.iter().all(|d| d.incremental), "{:?}", vd.disks);
    assert_eq!(vd.time_ms, 2_000);
    assert_eq!(vd.origin().unwrap().version, v2.id);
    // Nothing new: nothing copied.
    assert!(site.vault(&vault, &VaultOptions::default()).unwrap().copied.is_empty());
    drop(vault);
    drop(site);

    // The first site is gone, caches included: the vault alone restores.
    std::fs::remove_dir_all(env.path("store")).unwrap();
    std::fs::remove_dir_all(env.cache()).unwrap();
    std::fs::remove_dir_all(env.path("vcache")).unwrap();
    let vault =
        Store::builder().passphrase("vault pw").cache_dir(env.path("fresh-cache")).open(env.path("vault")).unwrap();
    assert!(vault.verify(&VerifyOptions::default().full(true)).unwrap().ok());
    let vs = vault.versions(Some("web")).unwrap();
    assert_eq!(vs.len(), 2);
    for (v, (src, s0, s1)) in vs.iter().zip(&expect) {
        assert_eq!(&v.origin().unwrap().version, src);
        for (disk, want) in [(0, s0), (1, s1)] {
            let out = env.path("out.img");
            vault.restore_to_file(v, disk, &out, &RestoreOptions::default().force(true)).unwrap();
            assert_eq!(&sha256_file(&out), want, "vault version {} disk {disk}", v.short_id());
        }
    }
    // The source's passphrase does not open the vault.
    let e = Store::builder().passphrase("pw").cache_dir(env.path("c9")).open(env.path("vault")).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::WrongPassphrase);
}

#[test]
fn vault_selection_and_its_own_retention() {
    let env = Env::new();
    let site = env.create(false);
    let img = env.path("d.img");
    let mut ids = Vec::new();
    for i in 0..4u64 {
        sparse_image(&img, 4 << 20, 8, 10 + i);
        ids.push(
            site.backup_images("db", &[&img], &BackupOptions::default().time_ms(1000 * i as i64)).unwrap().version.id,
        );
        site.backup_images("other", &[&img], &BackupOptions::default().time_ms(1000 * i as i64 + 1)).unwrap();
    }
    let vault = vault_store(&env, "vc");
    let r = site.vault(&vault, &VaultOptions::default().vm("db").last(2)).unwrap();
    let copied: Vec<&String> = r.copied.iter().map(|c| &c.source).collect();
    assert_eq!(copied, vec![&ids[2], &ids[3]]);
    assert!(vault.versions(Some("other")).unwrap().is_empty());
    let mut keep = RetentionPolicy::default();
    keep.keep_last = 1;
    let r = site.vault(&vault, &VaultOptions::default().vm("db").retention(keep)).unwrap();
    // The two older ones are copied, then the vault's policy keeps only the newest.
    assert_eq!(r.copied.len(), 2);
    assert_eq!(r.pruned.len(), 3);
    let left = vault.versions(Some("db")).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].origin().unwrap().version, ids[3]);
    vault.gc(&Default::default()).unwrap();
    let out = env.path("o.img");
    vault.restore_to_file(&left[0], 0, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&img));
    // A store cannot vault into itself.
    let e = site.vault(&site, &VaultOptions::default()).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::InvalidArgument);
}

#[test]
fn bandwidth_limit_paces_the_copy() {
    let env = Env::new();
    let site = env.create(false);
    let img = env.path("d.img");
    let mut data = vec![0u8; 6 << 20];
    Rng::new(5).fill(&mut data);
    std::fs::write(&img, &data).unwrap();
    site.backup_images("x", &[&img], &BackupOptions::default()).unwrap();
    let vault = vault_store(&env, "vc");
    let t = std::time::Instant::now();
    site.vault(&vault, &VaultOptions::default().bandwidth_limit(4 << 20)).unwrap();
    // 6 MiB at 4 MiB/s cannot take less than ~1.5 s (an upper bound would be a timing test).
    assert!(t.elapsed().as_secs_f64() >= 1.4, "{:?}", t.elapsed());
}

#[test]
fn a_vault_may_share_the_source_key_by_explicit_choice() {
    let env = Env::new();
    let site = env.create(true);
    let img = env.path("d.img");
    sparse_image(&img, 4 << 20, 6, 21);
    let v = site.backup_images("x", &[&img], &BackupOptions::default()).unwrap().version;
    let own = vault_store(&env, "vc1");
    let mut b = Store::builder();
    b.passphrase("shared vault pw").insecure_fast_kdf().cache_dir(env.path("vc2"));
    let shared = b.share_key_of(&site).unwrap().create(env.path("vault2")).unwrap();
    for vault in [&own, &shared] {
        site.vault(vault, &VaultOptions::default()).unwrap();
    }
    let maps = |s: &Store| s.version("latest", Some("x")).unwrap().stored_manifest().disks[0].maps.clone();
    // Same key, same chunk ids; an own key gives different ones.
    assert_eq!(maps(&shared), v.stored_manifest().disks[0].maps);
    assert_ne!(maps(&own), v.stored_manifest().disks[0].maps);
    let out = env.path("o.img");
    shared.restore_to_file(&shared.version("latest", None).unwrap(), 0, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&img));
    // An unencrypted store has no key to share.
    let plain = Store::builder().no_encryption().cache_dir(env.path("vc3")).create(env.path("plain")).unwrap();
    assert_eq!(Store::builder().share_key_of(&plain).unwrap_err().kind(), alike::ErrorKind::InvalidArgument);
}
