//! Backup from and restore to VHD and VHDX files through the facade, with
//! `qemu-img` as the oracle: what we back up from a qemu-made image equals
//! qemu's raw conversion, and what we restore as VHD/VHDX qemu reads back
//! equal to the original.

use std::path::Path;
use std::process::Command;

use alike::{BackupOptions, ImageFormat, RestoreOptions};
use alike_testing::{sha256_file, sparse_image};

use super::util::Env;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img is installed (qemu-utils)");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn convert(raw: &Path, out: &Path, fmt: &str, opts: &str) {
    let mut args = vec!["convert", "-f", "raw", "-O", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
    qemu_img(&args);
}

#[test]
fn vhd_and_vhdx_in_and_out() {
    let env = Env::new();
    let store = env.create(true);
    let raw = env.path("src.img");
    // 64 MiB + 1 sector: not a multiple of any block size.
    sparse_image(&raw, (64 << 20) + 512, 6, 7);
    let want = sha256_file(&raw);
    let inputs = [
        ("dyn.vhd", "vpc", "subformat=dynamic,force_size=on", ImageFormat::Vhd),
        ("fixed.vhd", "vpc", "subformat=fixed,force_size=on", ImageFormat::Vhd),
        ("dyn.vhdx", "vhdx", "subformat=dynamic,block_size=8M", ImageFormat::Vhdx),
        ("fixed.vhdx", "vhdx", "subformat=fixed", ImageFormat::Vhdx),
    ];
    for (name, fmt, opts, format) in inputs {
        let img = env.path(name);
        convert(&raw, &img, fmt, opts);
        assert_eq!(ImageFormat::detect(&img).unwrap(), format, "{name}");
        let r = store.backup_images(name, &[&img], &BackupOptions::default()).unwrap();
        // qemu's view of the image is the truth for its size and bytes.
        let oracle = env.path("oracle.raw");
        // (-f: qemu does not probe a fixed VHD, whose only footer is at the end.)
        qemu_img(&["convert", "-f", fmt, "-O", "raw", img.to_str().unwrap(), oracle.to_str().unwrap()]);
        let out = env.path("back.raw");
        store.restore_to_file(&r.version, 0, &out, &RestoreOptions::default().force(true)).unwrap();
        assert_eq!(sha256_file(&out), sha256_file(&oracle), "{name}: restored raw differs from qemu's conversion");
        if r.version.disks[0].size == (64 << 20) + 512 {
            assert_eq!(sha256_file(&out), want, "{name}");
        }
        // Unallocated space is not read: a dynamic image reads about its data.
        if name.starts_with("dyn") {
            assert!(r.read_bytes < 48 << 20, "{name}: read {} of a sparse image", r.read_bytes);
        }
    }
    // Restore one version into each format; qemu reads it back equal.
    let v = store.version("latest", Some("dyn.vhdx")).unwrap();
    for (format, qfmt) in [(ImageFormat::Vhd, "vpc"), (ImageFormat::Vhdx, "vhdx"), (ImageFormat::Raw, "raw")] {
        let out = env.path(&format!("restored.{format}"));
        store.restore_to_file(&v, 0, &out, &RestoreOptions::default().format(format)).unwrap();
        assert_eq!(ImageFormat::detect(&out).unwrap(), format);
        if format == ImageFormat::Vhdx {
            // (qemu's vpc driver has no check; compare below reads every block.)
            qemu_img(&["check", "-f", qfmt, out.to_str().unwrap()]);
        }
        qemu_img(&["compare", "-f", qfmt, "-F", "raw", out.to_str().unwrap(), raw.to_str().unwrap()]);
    }
}

#[test]
fn bad_images_are_named_and_refused() {
    let env = Env::new();
    let store = env.create(false);
    let raw = env.path("src.img");
    sparse_image(&raw, 8 << 20, 5, 3);
    let vhdx = env.path("d.vhdx");
    convert(&raw, &vhdx, "vhdx", "subformat=dynamic");
    // Break both headers' checksums.
    let mut b = std::fs::read(&vhdx).unwrap();
    b[(64 << 10) + 100] ^= 0xFF;
    b[(128 << 10) + 100] ^= 0xFF;
    std::fs::write(&vhdx, &b).unwrap();
    let e = store.backup_images("x", &[&vhdx], &BackupOptions::default()).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::BadImage, "{e}");
    assert!(e.to_string().contains("d.vhdx"), "{e}");
    let vhd = env.path("d.vhd");
    convert(&raw, &vhd, "vpc", "subformat=dynamic");
    let mut b = std::fs::read(&vhd).unwrap();
    b[70] ^= 0xFF; // inside the footer copy, under its checksum
    let n = b.len();
    b[n - 512 + 70] ^= 0xFF;
    std::fs::write(&vhd, &b).unwrap();
    let e = store.backup_images("x", &[&vhd], &BackupOptions::default()).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::BadImage, "{e}");
    assert!(e.to_string().contains("d.vhd"), "{e}");
    // Forced as raw, the same file backs up as bytes.
    store.backup_images("x", &[&vhd], &BackupOptions::default().image_format(ImageFormat::Raw)).unwrap();
    assert_eq!(store.versions(None).unwrap().len(), 1);
}
