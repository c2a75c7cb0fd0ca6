//! Partition tables made by sgdisk and parted, read as partx reads them.

use std::path::Path;

use alike_fs::part::{TableKind, read_table};
use alike_fs::scan::{Disk, Selector, scan};

use super::util::{build_tree, dev, mkfs, need, run};

/// A partition as partx prints it: (number, start sector, sectors, type, uuid, name).
type Row = (u32, u64, u64, String, String, String);

/// `partx -P` of an image.
fn partx(img: &Path) -> Vec<Row> {
    let out = run("partx", &["--bytes", "-g", "-P", "-o", "NR,START,SECTORS,TYPE,UUID,NAME", img.to_str().unwrap()]);
    out.lines()
        .map(|l| {
            let field = |k: &str| {
                let at = l.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
                l[at..at + l[at..].find('"').unwrap()].to_string()
            };
            (
                field("NR").parse().unwrap(),
                field("START").parse().unwrap(),
                field("SECTORS").parse().unwrap(),
                field("TYPE"),
                field("UUID"),
                field("NAME"),
            )
        })
        .collect()
}

fn ours(img: &Path) -> (alike_fs::part::PartitionTable, Vec<Row>) {
    let t = read_table(&dev(img)).unwrap().expect("a partition table");
    let rows = t
        .partitions
        .iter()
        .map(|p| {
            (
                p.number,
                p.start / 512,
                p.size / 512,
                p.type_.clone(),
                p.uuid.clone().unwrap_or_default(),
                p.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    (t, rows)
}

/// Writes the image `fs` into `disk` at byte `at`.
fn put(disk: &Path, at: u64, fs: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&std::fs::read(fs).unwrap(), at).unwrap();
}

#[test]
fn gpt_from_sgdisk_and_its_backup_when_the_primary_is_damaged() {
    if !need(&["sgdisk", "partx", "mkfs.ext4"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    run(
        "sgdisk",
        &[
            "-n",
            "1:2048:+8M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI System",
            "-n",
            "2:0:+30M",
            "-t",
            "2:8300",
            "-c",
            "2:root",
            "-n",
            "4:0:+4M",
            "-t",
            "4:8e00",
            disk.to_str().unwrap(),
        ],
    );
    let (table, rows) = ours(&disk);
    assert_eq!(table.kind, TableKind::Gpt);
    assert!(table.warnings.is_empty(), "{:?}", table.warnings);
    assert_eq!(rows, partx(&disk));
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 4], "slot numbers, with the gap");
    assert_eq!(table.partitions[0].type_name, "EFI System");
    assert_eq!(table.partitions[2].type_name, "Linux LVM");

    // ext4 in partition 2: the scan finds it, and only it.
    let src = t.path().join("src");
    build_tree(&src);
    let fs_img = t.path().join("p2.img");
    mkfs("ext4", &src, &fs_img, 30, &[]);
    put(&disk, table.partitions[1].start, &fs_img);
    let s = scan(&[Disk::new(0, "disk0", dev(&disk))]).unwrap();
    let v = s.select(0, &Selector::Auto).unwrap();
    assert_eq!(v.name, "2");
    assert_eq!(v.fs.as_ref().unwrap().type_name(), "ext4");

    // Damage the primary header: the backup is read, with a warning.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(b"garbage!", 512 + 24).unwrap();
    }
    let (damaged, rows2) = ours(&disk);
    assert_eq!(rows2, rows);
    assert!(damaged.warnings.iter().any(|w| w.contains("backup")), "{:?}", damaged.warnings);
    // sgdisk sees the same damage.
    let verify = std::process::Command::new(super::util::tool("sgdisk").unwrap())
        .args(["-v", disk.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(said.contains("damaged") || said.contains("corrupt") || said.contains("CRC"), "{said}");
}

#[test]
fn mbr_with_logical_partitions_from_parted() {
    if !need(&["parted", "partx", "mkfs.ext4", "mkfs.ext2"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    run(
        "parted",
        &[
            "-s",
            disk.to_str().unwrap(),
            "mklabel",
            "msdos",
            "mkpart",
            "primary",
            "ext4",
            "1MiB",
            "17MiB",
            "mkpart",
            "extended",
            "17MiB",
            "60MiB",
            "mkpart",
            "logical",
            "ext2",
            "18MiB",
            "30MiB",
            "mkpart",
            "logical",
            "31MiB",
            "40MiB",
        ],
    );
    let (table, rows) = ours(&disk);
    assert_eq!(table.kind, TableKind::Mbr);
    let px: Vec<(u32, u64, u64, String)> = partx(&disk).into_iter().map(|r| (r.0, r.1, r.2, r.3)).collect();
    let mine: Vec<(u32, u64, u64, String)> = rows.into_iter().map(|r| (r.0, r.1, r.2, r.3)).collect();
    assert_eq!(mine, px);
    assert_eq!(mine.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 5, 6]);
    assert!(table.partitions[1].is_container);

    // ext4 in 1, ext2 in 5: two filesystems on the disk.
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("which"), b"one").unwrap();
    let one = t.path().join("one.img");
    mkfs("ext4", &src, &one, 16, &[]);
    std::fs::write(src.join("which"), b"five").unwrap();
    let five = t.path().join("five.img");
    mkfs("ext2", &src, &five, 12, &[]);
    put(&disk, table.partitions[0].start, &one);
    put(&disk, table.partitions[2].start, &five);
    let s = scan(&[Disk::new(0, "disk0", dev(&disk))]).unwrap();
    let e = s.select(0, &Selector::Auto).unwrap_err().to_string();
    assert!(e.contains("2 filesystems") && e.contains("partition 1") && e.contains("partition 5"), "{e}");
    let v = s.select(0, &Selector::Partition(5)).unwrap();
    let fs = v.fs.as_ref().unwrap();
    assert_eq!(fs.type_name(), "ext2");
    let f = alike_fs::extract::lookup(fs.as_ref(), b"/which").unwrap();
    let mut b = [0u8; 8];
    let n = fs.read_at(f.meta.id, 0, &mut b).unwrap();
    assert_eq!(&b[..n], b"five");
    let e = s.select(0, &Selector::Partition(3)).unwrap_err().to_string();
    assert!(e.contains("no partition 3"), "{e}");
}

#[test]
fn a_whole_disk_filesystem_is_used_directly() {
    if !need(&["mkfs.ext4"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let img = t.path().join("fs.img");
    mkfs("ext4", &src, &img, 16, &[]);
    let s = scan(&[Disk::new(3, "d", dev(&img))]).unwrap();
    assert!(s.tables[0].1.is_none());
    let v = s.select(3, &Selector::Auto).unwrap();
    assert_eq!(v.name, "disk");
    assert!(s.select(0, &Selector::Auto).is_err());
}
