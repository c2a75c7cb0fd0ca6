//! Change-tracked incrementals: only changed blocks are read, unchanged
//! ranges are carried from the parent, and a broken chain falls back loudly.

use alike::{BackupOptions, DiskSource, Parent, VmInfo};
use alike_testing::{Rng, TrackedDisk, sha256};

use super::util::Env;

fn restore_bytes(env: &Env, store: &alike::Store, v: &alike::Version) -> Vec<u8> {
    let out = env.path("r.img");
    store.restore_to_file(v, 0, &out, &alike::RestoreOptions::default().force(true)).unwrap();
    std::fs::read(&out).unwrap()
}

#[test]
fn only_changed_blocks_are_read_and_the_rest_is_carried() {
    let env = Env::new();
    let store = env.create_fixed(true);
    let mut data = vec![0u8; 32 << 20];
    Rng::new(1).fill(&mut data[..20 << 20]);
    let disk = TrackedDisk::new(data);
    let vm = VmInfo::named("cbt-vm");
    let full = store.backup(vm.clone(), &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
    assert!(!full.version.disks[0].incremental);
    assert_eq!(full.read_bytes, 32 << 20);

    disk.write(100, &[1; 10]); // block 0
    disk.write((5 << 20) + 65530, &[2; 20]); // straddles two blocks
    disk.write(25 << 20, &[3; 65536]); // into the zero area, aligned
    let inc = store.backup(vm.clone(), &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
    let d = &inc.version.disks[0];
    assert!(d.incremental && d.fallback_reason.is_none(), "{d:?}");
    assert_eq!(inc.read_bytes, 4 * 65536, "read exactly the 4 changed blocks");
    assert_eq!(sha256(&restore_bytes(&env, &store, &inc.version)), sha256(&disk.bytes()));
    // The full version still restores as it was.
    assert_ne!(sha256(&restore_bytes(&env, &store, &full.version)), sha256(&disk.bytes()));

    assert_eq!(d.data_bytes, full.version.disks[0].data_bytes + 65536);

    // A block that is changed back to zeroes becomes a hole, not the old chunk.
    disk.write(25 << 20, &[0; 65536]);
    let inc2 = store.backup(vm, &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
    assert_eq!(inc2.read_bytes, 65536);
    assert_eq!(inc2.version.disks[0].data_bytes, full.version.disks[0].data_bytes);
    assert_eq!(sha256(&restore_bytes(&env, &store, &inc2.version)), sha256(&disk.bytes()));
}

#[test]
fn broken_change_chain_falls_back_to_a_full_read_and_says_so() {
    let env = Env::new();
    let store = env.create_fixed(false);
    let mut data = vec![0u8; 8 << 20];
    Rng::new(2).fill(&mut data);
    let disk = TrackedDisk::new(data);
    let vm = VmInfo::named("vm");
    store.backup(vm.clone(), &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
    disk.write(0, &[9; 100]);
    disk.forgotten_before.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    let r = store.backup(vm.clone(), &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
    let d = &r.version.disks[0];
    assert!(!d.incremental);
    assert!(d.fallback_reason.as_deref().unwrap().contains("cannot report changes"), "{d:?}");
    assert_eq!(r.read_bytes, 8 << 20);
    assert_eq!(r.new_bytes, 65536, "the full read still dedups");
    assert_eq!(sha256(&restore_bytes(&env, &store, &r.version)), sha256(&disk.bytes()));
    // Without a parent nothing is expected, so nothing is reported.
    let r = store.backup(vm, &[&disk as &dyn DiskSource], &BackupOptions::default().parent(Parent::None)).unwrap();
    assert!(r.version.disks[0].fallback_reason.is_none());
    // A tracked source after a version that recorded no token: read in full, and said so.
    let plain = alike::MemSource { label: "plain".into(), data: disk.bytes() };
    let vm2 = VmInfo::named("vm2");
    store.backup(vm2.clone(), &[&plain as &dyn DiskSource], &BackupOptions::default()).unwrap();
    let r = store.backup(vm2, &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
    let d = &r.version.disks[0];
    assert!(!d.incremental && d.fallback_reason.as_deref().unwrap().contains("no change token"), "{d:?}");
}
