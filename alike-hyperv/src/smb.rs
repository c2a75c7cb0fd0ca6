//! A Hyper-V host's share (the administrative `C$`), read over SMB2/3
//! without a mount, as a [`vhdx::Files`](crate::vhdx::Files): the VHDX
//! reader opens a checkpoint's disk chain on the host with
//! `VhdxSource::open_in` exactly as it opens local files, and reads are
//! positional (`FileReader::read_at` over one open handle per file; any
//! number of threads share the one SMB session).
//!
//! The SMB client (`smb2`) is async; an [`SmbShare`] owns a private
//! two-thread tokio runtime and blocks on it, so the engine's threads call
//! it like a file. Paths are the share's, with `/` separators
//! (`Hyper-V/web-01/Virtual Hard Disks/web-01-os.vhdx`); [`share_path`] maps
//! a host path (`C:\…`) to its share and path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::vhdx::{Files, ReadAt};
use crate::{Error, Result};

/// A connected share.
pub struct SmbShare {
    rt: tokio::runtime::Runtime,
    client: tokio::sync::Mutex<smb2::SmbClient>,
    tree: smb2::Tree,
    label: String,
}

impl std::fmt::Debug for SmbShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmbShare").field("share", &self.label).finish_non_exhaustive()
    }
}

fn smb_err<'a>(label: &'a str, what: &'static str) -> impl FnOnce(smb2::Error) -> Error + 'a {
    move |e| Error::Network { endpoint: label.to_owned(), what, source: std::io::Error::other(e.to_string()) }
}

/// The share and the path in it of a host path on a drive: `C:\a\b.vhdx`
/// → (`C$`, `a/b.vhdx`). `None` for a path that is not on a drive letter
/// (UNC paths, volume GUIDs) or that climbs with `..`.
pub fn share_path(host_path: &str) -> Option<(String, String)> {
    let b = host_path.as_bytes();
    if b.len() < 3 || !b[0].is_ascii_alphabetic() || b[1] != b':' || b[2] != b'\\' {
        return None;
    }
    let parts: Vec<&str> = host_path[3..].split(['\\', '/']).filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == ".." || *p == ".") {
        return None;
    }
    Some((format!("{}$", (b[0] as char).to_ascii_uppercase()), parts.join("/")))
}

impl SmbShare {
    /// Connects to `host:port` as `user` and opens `share`.
    ///
    /// # Errors
    /// [`Error::Network`] when the server cannot be reached, refuses the
    /// credentials or has no such share (the SMB status in the message).
    pub fn connect(host: &str, port: u16, share: &str, user: &str, password: &str) -> Result<SmbShare> {
        let label = format!("smb://{host}:{port}/{share}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("alike-smb")
            .enable_all()
            .build()
            .map_err(|source| Error::Network { endpoint: label.clone(), what: "starting the SMB runtime", source })?;
        let (domain, name) = match user.split_once('\\') {
            Some((d, u)) => (d.to_owned(), u.to_owned()),
            None => (String::new(), user.to_owned()),
        };
        let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let (client, tree) = rt.block_on(async {
            let cfg = smb2::ClientConfig {
                addr,
                timeout: std::time::Duration::from_secs(30),
                username: name,
                password: password.to_owned(),
                domain,
                auto_reconnect: true,
                compression: false,
                dfs_enabled: false,
                ..Default::default()
            };
            let mut c =
                smb2::SmbClient::connect(cfg).await.map_err(smb_err(&label, "connecting and authenticating"))?;
            let t = c.connect_share(share).await.map_err(smb_err(&label, "connecting to the share"))?;
            Ok::<_, Error>((c, t))
        })?;
        Ok(SmbShare { rt, client: tokio::sync::Mutex::new(client), tree, label })
    }

    /// The share's label (`smb://host:port/share`).
    pub fn label(&self) -> &str {
        &self.label
    }

    fn path_str(p: &Path) -> String {
        p.to_string_lossy().replace('\\', "/").trim_start_matches('/').to_owned()
    }

    /// Makes the folder `dir` and its missing parents; returns the folders
    /// made, outermost first (what a failed restore removes again).
    ///
    /// # Errors
    /// [`Error::Network`] when a folder cannot be made.
    pub fn create_dirs(&self, dir: &str) -> Result<Vec<String>> {
        let mut made = Vec::new();
        let mut at = String::new();
        for part in dir.split(['/', '\\']).filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            let exists = self.list(Path::new(&at)).is_some();
            if !exists {
                self.rt
                    .block_on(async {
                        let mut c = self.client.lock().await;
                        c.create_directory(&self.tree, &at).await
                    })
                    .map_err(smb_err(&self.label, "making a folder"))?;
                made.push(at.clone());
            }
        }
        Ok(made)
    }

    /// Whether a file or folder `path` exists.
    pub fn exists(&self, path: &str) -> bool {
        let p = Path::new(path);
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else { return false };
        let dir = p.parent().unwrap_or(Path::new(""));
        self.list(dir).is_some_and(|v| v.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)))
    }

    /// Copies the local file `local` to `path` on the share: written under
    /// a temporary name, in 1 MiB pieces, flushed, then renamed into place
    /// (a failed copy never leaves a file under the final name). Returns the
    /// bytes sent.
    ///
    /// # Errors
    /// [`Error::Network`] from the share; an I/O error reading `local`.
    pub fn upload(&self, local: &Path, path: &str) -> Result<u64> {
        use std::io::Read as _;
        let tmp = format!("{path}.alike-partial");
        let mut f = std::fs::File::open(local).map_err(|source| Error::Network {
            endpoint: local.display().to_string(),
            what: "opening the staged file",
            source,
        })?;
        let label = self.label.clone();
        let sent = self.rt.block_on(async {
            let mut w = {
                let mut c = self.client.lock().await;
                c.create_file_writer(&self.tree, &tmp).await.map_err(smb_err(&label, "creating a file"))?
            };
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(source) => {
                        let _ = w.abort().await;
                        return Err(Error::Network {
                            endpoint: label.clone(),
                            what: "reading the staged file",
                            source,
                        });
                    }
                };
                if let Err(e) = w.write_chunk(&buf[..n]).await {
                    let _ = w.abort().await;
                    return Err(smb_err(&label, "writing a file")(e));
                }
            }
            w.finish().await.map_err(smb_err(&label, "closing a file"))
        });
        let sent = match sent {
            Ok(n) => n,
            Err(e) => {
                let _ = self.delete(&tmp);
                return Err(e);
            }
        };
        self.rt
            .block_on(async {
                let mut c = self.client.lock().await;
                c.rename(&self.tree, &tmp, path).await
            })
            .map_err(smb_err(&self.label, "renaming a file into place"))?;
        Ok(sent)
    }

    /// Deletes the file `path`.
    ///
    /// # Errors
    /// [`Error::Network`] from the share.
    pub fn delete(&self, path: &str) -> Result<()> {
        self.rt
            .block_on(async {
                let mut c = self.client.lock().await;
                c.delete_file(&self.tree, path).await
            })
            .map_err(smb_err(&self.label, "deleting a file"))
    }

    /// Deletes the empty folder `path`.
    ///
    /// # Errors
    /// [`Error::Network`] from the share.
    pub fn delete_dir(&self, path: &str) -> Result<()> {
        self.rt
            .block_on(async {
                let mut c = self.client.lock().await;
                c.delete_directory(&self.tree, path).await
            })
            .map_err(smb_err(&self.label, "deleting a folder"))
    }

    fn list(&self, dir: &Path) -> Option<Vec<(String, bool)>> {
        let d = SmbShare::path_str(dir);
        self.rt
            .block_on(async {
                let mut c = self.client.lock().await;
                c.list_directory(&mut self.tree.clone(), &d).await.ok()
            })
            .map(|v| v.into_iter().map(|e| (e.name, e.is_directory)).collect())
    }
}

/// One file open on the share.
struct SmbFile {
    reader: smb2::FileReader,
    size: u64,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for SmbFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmbFile").field("size", &self.size).finish_non_exhaustive()
    }
}

impl ReadAt for SmbFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(self.size - offset);
        let data =
            self.rt.block_on(self.reader.read_at(offset, len)).map_err(|e| std::io::Error::other(e.to_string()))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.size)
    }
}

impl Files for SmbShare {
    fn open(&self, path: &Path) -> std::io::Result<Arc<dyn ReadAt>> {
        let p = SmbShare::path_str(path);
        let reader = self
            .rt
            .block_on(async {
                let mut c = self.client.lock().await;
                c.open_file_reader(&self.tree, &p).await
            })
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{}/{p}: {e}", self.label)))?;
        let size = reader.size();
        Ok(Arc::new(SmbFile { reader, size, rt: self.rt.handle().clone() }))
    }

    fn existing(&self, p: &Path) -> Option<PathBuf> {
        let name = p.file_name()?.to_str()?;
        let dir = p.parent().unwrap_or(Path::new(""));
        let entries = self.list(dir)?;
        // Windows names compare without case: an exact match first, then any case.
        let hit = entries
            .iter()
            .find(|(n, d)| !d && n == name)
            .or_else(|| entries.iter().find(|(n, d)| !d && n.eq_ignore_ascii_case(name)))?;
        Some(dir.join(&hit.0))
    }

    fn identity(&self, p: &Path) -> Option<String> {
        Some(SmbShare::path_str(p).to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_map_to_shares() {
        assert_eq!(
            share_path("C:\\Hyper-V\\vm\\Virtual Hard Disks\\a.vhdx"),
            Some(("C$".into(), "Hyper-V/vm/Virtual Hard Disks/a.vhdx".into()))
        );
        assert_eq!(share_path("d:\\x.avhdx"), Some(("D$".into(), "x.avhdx".into())));
        for bad in ["\\\\srv\\share\\a", "C:relative", "C:\\a\\..\\b", "", "Volume{x}\\a"] {
            assert_eq!(share_path(bad), None, "{bad}");
        }
    }
}
