//! The `fs` fuzz target's body on stable: real images (ext2, ext3, ext4
//! with inline data, behind MBR and GPT tables) with bytes flipped at
//! random must be read without a panic or a hang.

use std::time::{Duration, Instant};

use super::util::{build_tree, mkfs, need, run};

fn mutate(img: &[u8], seed: u64, rounds: usize) {
    let mut rng = alike_testing::Rng::new(seed);
    // The metadata of these small images lies in the first few hundred KiB.
    let span = img.len().min(600 << 10) as u64;
    let t0 = Instant::now();
    for _ in 0..rounds {
        let mut m = img.to_vec();
        for _ in 0..1 + rng.below(12) {
            let at = rng.below(span) as usize;
            m[at] = match rng.below(4) {
                0 => 0,
                1 => 0xFF,
                2 => m[at] ^ (1 << rng.below(8)),
                _ => rng.below(256) as u8,
            };
        }
        alike_fs::fuzz_one(&m);
    }
    assert!(t0.elapsed() < Duration::from_secs(120), "mutated images took {:?}", t0.elapsed());
}

#[test]
fn flipped_bytes_in_real_images_never_panic() {
    if !need(&["mkfs.ext4", "mkfs.ext2", "sgdisk"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("d/f{i}")), vec![i as u8; i * 700]).unwrap();
    }
    std::os::unix::fs::symlink("d/f1", src.join("l")).unwrap();
    std::os::unix::fs::symlink("x".repeat(100), src.join("long")).unwrap();
    let mut images = Vec::new();
    for (i, (fstype, extra)) in [
        ("ext4", &["-b", "1024", "-O", "inline_data", "-N", "64"][..]),
        ("ext2", &["-b", "1024", "-N", "64"][..]),
        ("ext3", &["-b", "1024", "-N", "64"][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let img = t.path().join(format!("{i}.img"));
        mkfs(fstype, &src, &img, 2, extra);
        images.push(std::fs::read(&img).unwrap());
    }
    // The ext4 one again behind a GPT.
    let disk = t.path().join("gpt.img");
    std::fs::File::create(&disk).unwrap().set_len(4 << 20).unwrap();
    run("sgdisk", &["-n", "1:34:+2M", disk.to_str().unwrap()]);
    let mut d = std::fs::read(&disk).unwrap();
    d[34 * 512..34 * 512 + images[0].len()].copy_from_slice(&images[0]);
    images.push(d);
    for (i, img) in images.iter().enumerate() {
        alike_fs::fuzz_one(img);
        mutate(img, i as u64 + 1, 150);
    }
    // And a full tree, unmutated.
    let full = t.path().join("full.img");
    build_tree(&t.path().join("tree"));
    mkfs("ext4", &t.path().join("tree"), &full, 32, &[]);
    alike_fs::fuzz_one(&std::fs::read(&full).unwrap());
}
