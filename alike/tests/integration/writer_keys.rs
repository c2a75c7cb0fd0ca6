//! Write-only keys (store format 3, `docs/security.md`): a processor's key
//! backs up — deduplicating against everything, building incrementals on its
//! block maps — but reads no chunk data; the full key restores all of it.

use alike::{BackupOptions, DiskSource, ErrorKind, RestoreOptions, Store, VaultOptions, VerifyOptions, VmInfo};
use alike_testing::{Rng, TrackedDisk, sha256};

use super::util::Env;

fn create(env: &Env) -> Store {
    let mut b = Store::builder();
    b.cache_dir(env.cache()).insecure_fast_kdf().passphrase("pw").writer_keys();
    b.create(env.path("store")).unwrap()
}

fn open_writer(env: &Env, key: &std::path::Path) -> alike::Result<Store> {
    Store::builder().cache_dir(env.path("writer-cache")).key_file(key).open(env.path("store"))
}

fn restore_bytes(env: &Env, store: &Store, v: &alike::Version) -> alike::Result<Vec<u8>> {
    let out = env.path("r.img");
    store.restore_to_file(v, 0, &out, &RestoreOptions::default().force(true))?;
    Ok(std::fs::read(&out).unwrap())
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut d = vec![0u8; n];
    Rng::new(seed).fill(&mut d);
    d
}

#[test]
fn a_writer_backs_up_and_increments_while_only_the_full_key_restores() {
    let env = Env::new();
    let full = create(&env);
    assert_eq!(full.format_version(), 3);
    let other = alike::MemSource { label: "other".into(), data: random(3 << 20, 1) };
    let other_v = full.backup(VmInfo::named("other-vm"), &[&other], &BackupOptions::default()).unwrap().version;

    let key = env.path("writer.key");
    full.add_writer_key(&key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let writer = open_writer(&env, &key).unwrap();
    assert!(writer.is_write_only() && !full.is_write_only());

    let mut data = random(12 << 20, 2);
    data[4 << 20..6 << 20].fill(0);
    let disk = TrackedDisk::new(data);
    let vm = VmInfo::named("vm1");
    let first = writer.backup(vm.clone(), &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
    assert_eq!(first.read_bytes, 12 << 20);
    disk.write(1 << 20, &[7; 5000]);
    disk.write(9 << 20, &random(70_000, 3));
    let inc = writer.backup(vm.clone(), &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
    let d = &inc.version.disks[0];
    assert!(d.incremental && d.fallback_reason.is_none(), "the writer builds incrementals: {d:?}");
    assert!(inc.read_bytes < 1 << 20, "read only around the changes: {}", inc.read_bytes);
    assert_eq!(inc.version.parent(), Some(first.version.id.as_str()));

    // The full key restores both of the writer's versions bit-exact, and its own.
    let full = env.open();
    let v1 = full.version(&first.version.id, None).unwrap();
    let v2 = full.version(&inc.version.id, None).unwrap();
    assert_ne!(sha256(&restore_bytes(&env, &full, &v1).unwrap()), sha256(&disk.bytes()));
    assert_eq!(sha256(&restore_bytes(&env, &full, &v2).unwrap()), sha256(&disk.bytes()));
    assert_eq!(restore_bytes(&env, &full, &other_v).unwrap(), other.data);

    // The writer lists versions, but restores none: not another VM's, not its own.
    assert_eq!(writer.versions(None).unwrap().len(), 3);
    for v in [&other_v, &v2] {
        let e = restore_bytes(&env, &writer, v).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WriteOnlyKey, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("write-only key") && msg.contains(v.short_id()), "{msg}");
    }
    // Verify: the writer checks what it can and says what it cannot; the full key checks everything.
    let r = writer.verify(&VerifyOptions::default().full(true)).unwrap();
    assert!(r.damaged.is_empty() && !r.ok() && r.data_frames_not_opened > 0, "{r:?}");
    assert!(r.not_checked.as_deref().unwrap().contains("write-only key"));
    assert!(writer.verify(&VerifyOptions::default()).unwrap().ok(), "a quick verify needs no data");
    let r = full.verify(&VerifyOptions::default().full(true)).unwrap();
    assert!(r.ok() && r.data_frames_not_opened == 0 && r.not_checked.is_none(), "{r:?}");

    // A writer removes nothing.
    assert_eq!(writer.forget(&v2.id).unwrap_err().kind(), ErrorKind::WriteOnlyKey);
    assert_eq!(writer.gc(&Default::default()).unwrap_err().kind(), ErrorKind::WriteOnlyKey);
    let mut keep = alike::RetentionPolicy::default();
    keep.keep_last = 1;
    assert_eq!(writer.prune(None, &keep, false).unwrap_err().kind(), ErrorKind::WriteOnlyKey);
    assert_eq!(writer.versions(None).unwrap().len(), 3);

    // A writer cannot hand out keys, nor vault out of the store.
    assert_eq!(writer.add_writer_key(env.path("w2.key")).unwrap_err().kind(), ErrorKind::WriteOnlyKey);
    assert!(!env.path("w2.key").exists());

    // Vaulting and GC keep working with the full key.
    let mut b = Store::builder();
    b.cache_dir(env.path("vault-cache")).insecure_fast_kdf().passphrase("vpw");
    let vault = b.create(env.path("vault")).unwrap();
    assert_eq!(full.vault(&vault, &VaultOptions::default()).unwrap().copied.len(), 3);
    let e = writer.vault(&vault, &VaultOptions::default().vm("vm1")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WriteOnlyKey, "{e}");
    let vv = vault.versions(Some("vm1")).unwrap().pop().unwrap();
    assert_eq!(sha256(&restore_bytes(&env, &vault, &vv).unwrap()), sha256(&disk.bytes()));
    full.forget(&first.version.id).unwrap();
    full.gc(&Default::default()).unwrap();
    assert_eq!(sha256(&restore_bytes(&env, &full, &v2).unwrap()), sha256(&disk.bytes()));
    assert!(full.verify(&VerifyOptions::default().full(true)).unwrap().ok());
}

#[test]
fn writer_and_full_key_backups_deduplicate_against_each_other() {
    let env = Env::new();
    let full = create(&env);
    let bytes = full.writer_key_file_bytes().unwrap();
    let writer =
        Store::builder().cache_dir(env.path("writer-cache")).key_file_contents(bytes).open(env.path("store")).unwrap();
    assert!(writer.is_write_only());

    let a = alike::MemSource { label: "a".into(), data: random(4 << 20, 10) };
    let r = full.backup(VmInfo::named("a"), &[&a], &BackupOptions::default()).unwrap();
    assert_eq!(r.new_bytes, 4 << 20);
    let r = writer.backup(VmInfo::named("b"), &[&a], &BackupOptions::default()).unwrap();
    assert_eq!(r.new_bytes, 0, "the writer finds the full key's chunks");

    let c = alike::MemSource { label: "c".into(), data: random(3 << 20, 11) };
    let r = writer.backup(VmInfo::named("c"), &[&c], &BackupOptions::default()).unwrap();
    assert_eq!(r.new_bytes, 3 << 20);
    let full = env.open();
    let r = full.backup(VmInfo::named("d"), &[&c], &BackupOptions::default()).unwrap();
    assert_eq!(r.new_bytes, 0, "the full key finds the writer's chunks");
    assert_eq!(restore_bytes(&env, &full, &r.version).unwrap(), c.data);
}

#[test]
fn bad_writer_keys_and_stores_without_them_are_refused_clearly() {
    let env = Env::new();
    let full = create(&env);
    let key = env.path("w.key");
    full.add_writer_key(&key).unwrap();
    let e = full.add_writer_key(&key).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let good = std::fs::read(&key).unwrap();

    // Damaged anywhere: refused, and no error shows the file's bytes.
    for (i, what) in [(20usize, ErrorKind::Corruption), (2, ErrorKind::Corruption), (9, ErrorKind::UnsupportedVersion)]
    {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        let p = env.path(&format!("bad{i}.key"));
        std::fs::write(&p, &bad).unwrap();
        let e = open_writer(&env, &p).unwrap_err();
        assert_eq!(e.kind(), what, "byte {i}: {e}");
        let hex_key = String::from_utf8_lossy(&good[12..good.len() - 32]).to_string();
        for field in hex_key.split('"').filter(|f| f.len() == 64) {
            assert!(!e.to_string().contains(field), "the error shows key bytes: {e}");
        }
    }
    std::fs::write(env.path("short.key"), &good[..40]).unwrap();
    assert!(open_writer(&env, &env.path("short.key")).is_err());
    std::fs::write(env.path("text.key"), b"correct horse battery staple\n").unwrap();
    let e = open_writer(&env, &env.path("text.key")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corruption, "{e}");
    assert!(!e.to_string().contains("horse"), "{e}");

    // Another store's writer key.
    let other_env = Env::new();
    let other = create(&other_env);
    other.add_writer_key(env.path("other.key")).unwrap();
    let e = open_writer(&env, &env.path("other.key")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("belongs to store"), "{e}");

    // A store made without write-only keys (format 2) has none to give.
    let env2 = Env::new();
    let plain = env2.create(true);
    assert_eq!(plain.format_version(), 2);
    let e = plain.add_writer_key(env2.path("w.key")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("--writer-keys"), "{e}");
    // Write-only keys need encryption.
    let mut b = Store::builder();
    b.cache_dir(env2.cache()).no_encryption().writer_keys();
    assert_eq!(b.create(env2.path("u")).unwrap_err().kind(), ErrorKind::InvalidArgument);
}
