//! A real ext4 image filled with real files, and its updated twins.

use alike::BackupOptions;
use alike_testing::{ext4_pair, sha256_file};

use super::util::{Env, restore_sha};

#[test]
fn ext4_image_and_its_updated_twins_restore_bit_exact() {
    let env = Env::new();
    let Some([v1, v2, fresh]) = ext4_pair(&env.path("imgs"), 96, 40) else {
        alike_testing::skip("mkfs.ext4 or debugfs is not installed (e2fsprogs; bash scripts/test.sh installs it)");
        return;
    };
    let store = env.create(true);
    let r1 = store.backup_images("ext4", &[&v1], &BackupOptions::default()).unwrap();
    let r2 = store.backup_images("ext4", &[&v2], &BackupOptions::default()).unwrap();
    let r3 = store.backup_images("ext4-fresh", &[&fresh], &BackupOptions::default()).unwrap();
    // The in-place update shares most blocks with v1.
    assert!(r2.new_bytes < r1.new_bytes / 3, "v2 added {} of v1's {}", r2.new_bytes, r1.new_bytes);
    // A fresh layout of the same files shares only the 64 KiB blocks that happen to line up
    // (ext4 places files on 4 KiB boundaries: docs/design/block-size.md), which depends on the
    // files this machine supplies; it must at least cost no more than storing the image anew.
    assert!(
        r3.new_bytes <= r1.new_bytes + r1.new_bytes / 20,
        "fresh layout added {} vs {}",
        r3.new_bytes,
        r1.new_bytes
    );
    let store = env.open();
    for (r, img) in [(&r1, &v1), (&r2, &v2), (&r3, &fresh)] {
        let v = store.version(&r.version.id, None).unwrap();
        assert_eq!(restore_sha(&store, &v, env.dir.path()), vec![sha256_file(img)]);
    }
}
