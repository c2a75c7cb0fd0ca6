//! The facade and vaulting on a real S3-compatible server (SeaweedFS on
//! loopback, started by the test command: `eval "$(bash scripts/s3-server.sh start)"`).
//! Without `ALIKE_TEST_S3_ENDPOINT` these tests skip — except under `CI`,
//! where they fail: CI must not skip them silently.

use alike::{BackupOptions, ObjectOptions, RestoreOptions, Store, VaultOptions, VerifyOptions};
use alike_testing::{Rng, sha256_file};

use super::util::Env;

/// Object options and a fresh `s3://` prefix on the test server, if there is one.
fn s3() -> Option<(ObjectOptions, String)> {
    let Ok(endpoint) = std::env::var("ALIKE_TEST_S3_ENDPOINT") else {
        alike_testing::skip("ALIKE_TEST_S3_ENDPOINT is not set (eval \"$(bash scripts/s3-server.sh start)\")");
        return None;
    };
    let mut o = ObjectOptions::default();
    o.endpoint(endpoint).allow_http(true).path_style(true);
    o.region(std::env::var("ALIKE_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into()));
    if let (Ok(k), Ok(s)) = (std::env::var("ALIKE_TEST_S3_ACCESS_KEY"), std::env::var("ALIKE_TEST_S3_SECRET_KEY")) {
        o.credentials(k, s);
    }
    let bucket = std::env::var("ALIKE_TEST_S3_BUCKET").unwrap_or_else(|_| "alike".into());
    let mut tag = [0u8; 6];
    Rng::new(std::process::id() as u64 ^ std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos() as u64).fill(&mut tag);
    Some((o, format!("s3://{bucket}/facade-{}", hex::encode(tag))))
}

fn builder(o: &ObjectOptions, cache: std::path::PathBuf, pw: &str) -> alike::StoreBuilder {
    let mut b = Store::builder();
    b.passphrase(pw).insecure_fast_kdf().cache_dir(cache).object_options(o.clone());
    b
}

#[test]
fn store_on_s3_and_vault_to_s3() {
    let Some((o, url)) = s3() else { return };
    let env = Env::new();
    let img = env.path("d.img");
    let mut data = vec![0u8; 48 << 20];
    Rng::new(3).fill(&mut data[..24 << 20]); // half data, half zeroes
    std::fs::write(&img, &data).unwrap();

    // A primary store on S3.
    let primary = format!("{url}/primary");
    let s = builder(&o, env.path("c1"), "pw").create_at(&primary).unwrap();
    let t = std::time::Instant::now();
    let v = s.backup_images("web", &[&img], &BackupOptions::default()).unwrap().version;
    eprintln!("backup to S3: 48 MiB image (24 MiB data) in {:.2} s", t.elapsed().as_secs_f64());
    let out = env.path("o.img");
    let t = std::time::Instant::now();
    s.restore_to_file(&v, 0, &out, &RestoreOptions::default()).unwrap();
    eprintln!("restore from S3: {:.0} MiB/s of image", 48.0 / t.elapsed().as_secs_f64());
    assert_eq!(sha256_file(&out), sha256_file(&img));
    assert!(builder(&o, env.path("c1b"), "pw").create_at(&primary).is_err(), "a second create must fail");
    drop(s);

    // A local site vaulted to S3, then incrementally after a ~2% change.
    let site = env.create(true);
    site.backup_images("web", &[&img], &BackupOptions::default()).unwrap();
    let vault_url = format!("{url}/vault");
    let vault = builder(&o, env.path("vc"), "vault pw").create_at(&vault_url).unwrap();
    let t = std::time::Instant::now();
    let r = site.vault(&vault, &VaultOptions::default()).unwrap();
    eprintln!(
        "vault to S3: read {:.1} MiB, sent {:.1} MiB in {:.2} s ({:.0} MiB/s of data)",
        r.read_bytes as f64 / 1048576.0,
        r.sent_bytes as f64 / 1048576.0,
        t.elapsed().as_secs_f64(),
        r.read_bytes as f64 / 1048576.0 / t.elapsed().as_secs_f64()
    );
    let mut rng = Rng::new(9);
    let mut piece = vec![0u8; 64 << 10];
    for _ in 0..8 {
        rng.fill(&mut piece);
        let at = rng.below(24 << 4) as usize * (64 << 10);
        data[at..at + piece.len()].copy_from_slice(&piece);
    }
    std::fs::write(&img, &data).unwrap();
    site.backup_images("web", &[&img], &BackupOptions::default()).unwrap();
    let r2 = site.vault(&vault, &VaultOptions::default()).unwrap();
    eprintln!(
        "incremental vault after 8 × 64 KiB changed: read {} KiB, sent {} KiB",
        r2.read_bytes >> 10,
        r2.sent_bytes >> 10
    );
    // Each changed piece: its own bytes, the chunk it starts in and the cuts
    // after it (content-defined chunks of at most 64 KiB).
    assert!(r2.read_bytes <= 8 * 3 * 65536, "read {}", r2.read_bytes);
    assert!(r2.sent_bytes < 2 << 20);
    drop(vault);
    drop(site);

    // The vault alone, from a fresh cache, verifies and restores bit-exact.
    std::fs::remove_dir_all(env.path("store")).unwrap();
    let vault = builder(&o, env.path("fresh"), "vault pw").open_at(&vault_url).unwrap();
    assert!(vault.verify(&VerifyOptions::default().full(true)).unwrap().ok());
    let latest = vault.version("latest", Some("web")).unwrap();
    vault.restore_to_file(&latest, 0, &out, &RestoreOptions::default().force(true)).unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&img));
}
