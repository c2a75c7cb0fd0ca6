//! The VMs' disk files: real VHDX/AVHDX chains written with alike-formats'
//! writer. Our writer writes whole files (temporary name, then rename), so a
//! guest write or a merge rewrites the one file it changes; the demo disks
//! are tens of MiB, so this costs milliseconds.

use std::ops::Range;
use std::path::{Path, PathBuf};

use alike_core::{DiskSource as _, DiskTarget as _};
use alike_formats::vhdx::{CreateOptions, VhdxSource, VhdxTarget};

use crate::Error;

const COPY: u64 = 1 << 20;

fn vhdx_err(path: &Path) -> impl FnOnce(alike_formats::vhdx::VhdxError) -> Error + '_ {
    move |e| Error::Disk { file: path.to_owned(), reason: e.to_string() }
}

fn core_err(path: &Path) -> impl FnOnce(alike_core::Error) -> Error + '_ {
    move |e| Error::Disk { file: path.to_owned(), reason: e.to_string() }
}

/// Sorted, merged union of ranges.
pub(crate) fn union(mut r: Vec<Range<u64>>) -> Vec<Range<u64>> {
    r.retain(|x| x.start < x.end);
    r.sort_by_key(|x| x.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(r.len());
    for x in r {
        match out.last_mut() {
            Some(l) if x.start <= l.end => l.end = l.end.max(x.end),
            _ => out.push(x),
        }
    }
    out
}

/// Copies `ranges` of `src` into `dst`, then applies `writes`.
fn fill(
    src: Option<&VhdxSource>,
    ranges: &[Range<u64>],
    dst: &VhdxTarget,
    writes: &[(u64, Vec<u8>)],
    path: &Path,
) -> Result<(), Error> {
    if let Some(src) = src {
        let mut buf = vec![0u8; COPY as usize];
        for r in ranges {
            let mut at = r.start;
            while at < r.end {
                let n = (r.end - at).min(COPY) as usize;
                src.read_exact_at(at, &mut buf[..n]).map_err(vhdx_err(path))?;
                dst.write(at, &buf[..n]).map_err(vhdx_err(path))?;
                at += n as u64;
            }
        }
    }
    for (off, data) in writes {
        dst.write(*off, data).map_err(vhdx_err(path))?;
    }
    Ok(())
}

/// Creates a dynamic VHDX of `size` bytes holding `writes`.
pub(crate) fn create_base(path: &Path, size: u64, block_size: u32, writes: &[(u64, Vec<u8>)]) -> Result<(), Error> {
    let mut opts = CreateOptions::default();
    opts.block_size(block_size);
    let t = VhdxTarget::create(path, size, &opts).map_err(vhdx_err(path))?;
    fill(None, &[], &t, writes, path)?;
    t.finish(size).map_err(core_err(path))
}

/// Creates an empty AVHDX at `path` over `parent`.
pub(crate) fn create_child(path: &Path, parent: &Path) -> Result<(), Error> {
    let t = VhdxTarget::create_differencing(path, parent).map_err(vhdx_err(path))?;
    let size = VhdxSource::open(parent).map_err(vhdx_err(parent))?.size();
    t.finish(size).map_err(core_err(path))
}

/// What the file itself holds (not its parents).
fn own_ranges(path: &Path, is_base: bool) -> Result<Vec<Range<u64>>, Error> {
    let s = VhdxSource::open(path).map_err(vhdx_err(path))?;
    if is_base { s.allocated().map_err(vhdx_err(path)) } else { s.child_ranges().map_err(vhdx_err(path)) }
}

/// Rewrites the file `chain[at]` (over `chain[at - 1]`, or a base when `at`
/// is 0) to hold `ranges` read through the chain ending at `read_top`, plus
/// `writes`.
fn rewrite(
    chain: &[PathBuf],
    at: usize,
    read_top: &Path,
    ranges: &[Range<u64>],
    writes: &[(u64, Vec<u8>)],
) -> Result<(), Error> {
    let path = &chain[at];
    let src = VhdxSource::open(read_top).map_err(vhdx_err(read_top))?;
    let size = src.size();
    let block = src.layers().last().map_or(32 << 20, |l| l.block_size as u32);
    let t = if at == 0 {
        let mut opts = CreateOptions::default();
        opts.block_size(block);
        VhdxTarget::create(path, size, &opts)
    } else {
        VhdxTarget::create_differencing(path, &chain[at - 1])
    }
    .map_err(vhdx_err(path))?;
    fill(Some(&src), ranges, &t, writes, path)?;
    t.finish(size).map_err(core_err(path))
}

/// The guest writes `writes` to the disk whose chain is `chain` (base
/// first): the top file is rewritten with them.
pub(crate) fn guest_write(chain: &[PathBuf], writes: &[(u64, Vec<u8>)]) -> Result<(), Error> {
    let at = chain.len() - 1;
    let top = &chain[at];
    let ranges = own_ranges(top, at == 0)?;
    rewrite(chain, at, top, &ranges, writes)
}

/// Merges the top file into its parent (a checkpoint's deletion) and
/// removes it; the chain loses its last element.
pub(crate) fn merge_top(chain: &mut Vec<PathBuf>) -> Result<(), Error> {
    let n = chain.len();
    if n < 2 {
        return Ok(());
    }
    let top = chain[n - 1].clone();
    let mut ranges = own_ranges(&chain[n - 2], n == 2)?;
    ranges.extend(own_ranges(&top, false)?);
    rewrite(chain, n - 2, &top, &union(ranges), &[])?;
    std::fs::remove_file(&top).map_err(|e| Error::Disk { file: top.clone(), reason: e.to_string() })?;
    chain.pop();
    Ok(())
}

/// Reads `len` bytes at `offset` of the disk whose top file is `top`.
pub(crate) fn read(top: &Path, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
    let s = VhdxSource::open(top).map_err(vhdx_err(top))?;
    let mut buf = vec![0u8; len];
    s.read_exact_at(offset, &mut buf).map_err(vhdx_err(top))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_checkpoints_and_merges_keep_the_content() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("d.vhdx");
        create_base(&base, 8 << 20, 1 << 20, &[(0, vec![1; 4096]), (3 << 20, vec![2; 512])]).unwrap();
        let mut chain = vec![base.clone()];
        guest_write(&chain, &[(4096, vec![3; 4096])]).unwrap();
        let child = d.path().join("d_X.avhdx");
        create_child(&child, &base).unwrap();
        chain.push(child.clone());
        guest_write(&chain, &[(0, vec![9; 512]), (7 << 20, vec![8; 1024])]).unwrap();
        // The frozen parent still holds the old content.
        assert_eq!(read(&base, 0, 2).unwrap(), vec![1, 1]);
        let top = read(&child, 0, 8 << 20).unwrap();
        assert_eq!(&top[..512], &[9; 512][..]);
        assert_eq!(&top[512..4096], &[1; 3584][..]);
        assert_eq!(&top[4096..8192], &[3; 4096][..]);
        assert_eq!(top[3 << 20], 2);
        assert_eq!(&top[7 << 20..(7 << 20) + 1024], &[8; 1024][..]);
        merge_top(&mut chain).unwrap();
        assert_eq!(chain, vec![base.clone()]);
        assert!(!child.exists());
        assert_eq!(read(&base, 0, 8 << 20).unwrap(), top);
    }

    #[test]
    fn union_merges() {
        assert_eq!(union(vec![5..6, 0..2, 1..3, 6..8, 9..9]), vec![0..3, 5..8]);
    }
}
