//! Lists a filesystem image read by alike-fs's NTFS or FAT reader:
//! `cargo run -p alike-fs --example fsls -- IMAGE [--read]`; with `--read`
//! it reads every file (1 MiB reads) and prints the time each took; with
//! `--cat PATH` it writes that file's bytes to standard output instead.
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use alike_fs::{BlockDevice, FileId, FileKind, FileSystem, FsError};

struct FileDev(std::fs::File, u64);

impl BlockDevice for FileDev {
    fn size(&self) -> u64 {
        self.1
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> alike_fs::Result<()> {
        self.0.read_exact_at(buf, offset).map_err(|e| FsError::Device {
            device: "image".into(),
            offset,
            len: buf.len() as u64,
            message: e.to_string(),
        })
    }
}

fn list(fs: &dyn FileSystem, dir: FileId, path: &str, read: bool) {
    let entries = match fs.read_dir(dir) {
        Ok(e) => e,
        Err(e) => return println!("{path}: {e}"),
    };
    for e in entries {
        let name = String::from_utf8_lossy(&e.name);
        let p = format!("{path}/{name}");
        let m = &e.meta;
        let extra = match m.kind {
            FileKind::Symlink => format!(
                " -> {}",
                fs.read_link(m.id).map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_else(|e| e.to_string())
            ),
            _ => String::new(),
        };
        println!(
            "{:?} {:>10} id={} nlink={} mtime={:?} {p}{extra}{}",
            m.kind,
            m.size,
            m.id.0,
            m.nlink,
            m.mtime,
            m.unreadable.as_deref().map(|u| format!("  [unreadable: {u}]")).unwrap_or_default()
        );
        if read && m.kind == FileKind::File && m.unreadable.is_none() {
            let t = std::time::Instant::now();
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < m.size {
                at += fs.read_at(m.id, at, &mut buf).unwrap() as u64;
            }
            let s = t.elapsed().as_secs_f64();
            println!("    read {} bytes in {:.3} s ({:.0} MB/s)", m.size, s, m.size as f64 / s / 1e6);
        }
        if m.kind == FileKind::Dir {
            list(fs, m.id, &p, read);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let f = std::fs::File::open(&args[1]).unwrap();
    let size = f.metadata().unwrap().len();
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDev(f, size));
    let fs = match alike_fs::ntfs::open(dev.clone()).unwrap() {
        Some(fs) => fs,
        None => alike_fs::fat::open(dev).unwrap().expect("neither NTFS nor FAT"),
    };
    if let Some(i) = args.iter().position(|a| a == "--cat") {
        use std::io::Write;
        let mut id = fs.root();
        for part in args[i + 1].split('/').filter(|p| !p.is_empty()) {
            id =
                fs.read_dir(id).unwrap().into_iter().find(|e| e.name == part.as_bytes()).expect("no such file").meta.id;
        }
        let size = fs.metadata(id).unwrap().size;
        let (mut at, mut buf, mut out) = (0, vec![0u8; 1 << 20], std::io::stdout().lock());
        while at < size {
            let n = fs.read_at(id, at, &mut buf).unwrap();
            out.write_all(&buf[..n]).unwrap();
            at += n as u64;
        }
        return;
    }
    println!("{:?} label {:?}", fs.kind(), fs.label());
    let t = std::time::Instant::now();
    list(&*fs, fs.root(), "", args.iter().any(|a| a == "--read"));
    println!("total {:.3} s", t.elapsed().as_secs_f64());
}
