//! The tools compared — alike (its release CLI), restic and borg — and how
//! each is asked to init, back up and restore, with comparable settings:
//! encryption on for all, each tool's default compression, plus borg with
//! zstd level 3. Caches and key material live in the run's work directory,
//! so runs are hermetic.

use std::path::{Path, PathBuf};

use crate::measure::Cmd;

const PASSWORD: &str = "alike-bench";

/// Which program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// alike's CLI.
    Alike,
    /// restic (0.14: repository format 2, compression `auto` by default).
    Restic,
    /// borg 1.2.
    Borg,
}

/// One tool configuration.
#[derive(Debug, Clone)]
pub(crate) struct Tool {
    /// Which program.
    pub(crate) kind: Kind,
    /// Its name in tables, e.g. `borg (zstd,3)`.
    pub(crate) name: String,
    /// The executable.
    pub(crate) bin: PathBuf,
    /// Compression argument (borg `--compression`), when not the default.
    compression: Option<String>,
    /// borg's encryption mode.
    borg_mode: String,
    /// alike: the `--chunking` given to `alike init` (`None`: the store's default).
    pub(crate) chunking: Option<String>,
    /// The version string, for the report.
    pub(crate) version: String,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn version_of(bin: &Path, arg: &str) -> String {
    std::process::Command::new(bin)
        .arg(arg)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// casync, where installed: its binary and version line. Only its stored
/// bytes on the pairs are issue 13's mark to reach for, so it is not a tool
/// of the (timed) comparison; the harness runs it on the pairs alone.
pub(crate) fn casync() -> Option<(PathBuf, String)> {
    let bin = which("casync")?;
    let version = version_of(&bin, "--version");
    Some((bin, version))
}

/// Whether the CPU has SHA-256 instructions (then borg's `repokey`,
/// HMAC-SHA256, is its faster authenticated mode; otherwise `repokey-blake2`).
fn cpu_has_sha() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "sha_ni")))
        .unwrap_or(false)
}

/// The name of alike's tool for the `--chunking` spec of its stores
/// (`None`: the store's default): `alike`, or `alike (SPEC)`.
pub(crate) fn alike_name(chunking: Option<&str>) -> String {
    match chunking {
        None => "alike".into(),
        Some(c) => format!("alike ({c})"),
    }
}

/// The tool configurations to run: alike always — once with the store's
/// default chunking when `chunkings` is empty, else once per spec (each
/// store made with `alike init --chunking SPEC`), the first one primary;
/// restic and borg when installed and `peers` is set; borg with zstd too
/// when `variants`.
pub(crate) fn configured(alike_bin: &Path, chunkings: &[String], peers: bool, variants: bool) -> Vec<Tool> {
    let version = version_of(alike_bin, "--version");
    let specs: Vec<Option<String>> =
        if chunkings.is_empty() { vec![None] } else { chunkings.iter().cloned().map(Some).collect() };
    let mut v: Vec<Tool> = specs
        .into_iter()
        .map(|chunking| Tool {
            kind: Kind::Alike,
            name: alike_name(chunking.as_deref()),
            bin: alike_bin.to_path_buf(),
            compression: None,
            borg_mode: String::new(),
            chunking,
            version: version.clone(),
        })
        .collect();
    if !peers {
        return v;
    }
    if let Some(bin) = which("restic") {
        let version = version_of(&bin, "version");
        v.push(Tool {
            kind: Kind::Restic,
            name: "restic".into(),
            bin,
            compression: None,
            borg_mode: String::new(),
            chunking: None,
            version,
        });
    }
    if let Some(bin) = which("borg") {
        let version = version_of(&bin, "--version");
        let borg_mode = if cpu_has_sha() { "repokey" } else { "repokey-blake2" }.to_string();
        let mut configs = vec![("borg", None)];
        if variants {
            configs.push(("borg (zstd,3)", Some("zstd,3".to_string())));
        }
        for (name, comp) in configs {
            v.push(Tool {
                kind: Kind::Borg,
                name: name.into(),
                bin: bin.clone(),
                compression: comp,
                borg_mode: borg_mode.clone(),
                chunking: None,
                version: version.clone(),
            });
        }
    }
    v
}

/// A repository of one tool, with its private cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Repo {
    /// The repository directory.
    pub(crate) dir: PathBuf,
    cache: PathBuf,
}

impl Repo {
    /// A repository at `dir` with its cache beside it.
    pub(crate) fn new(dir: PathBuf) -> Repo {
        let cache = dir.with_extension("cache");
        Repo { dir, cache }
    }
    /// Removes the repository and its cache.
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.cache);
    }
}

impl Tool {
    /// A short description of the settings, for the report.
    pub(crate) fn settings(&self) -> String {
        match self.kind {
            Kind::Alike => format!(
                "AES-256-GCM, keyed BLAKE3, zstd 3 in ~1 MiB frames, {}",
                match self.chunking.as_deref() {
                    None =>
                        "the store's default chunking (`alike init`: content-defined on 4 KiB boundaries, 16/32/64 KiB)"
                            .to_string(),
                    Some(c) => format!("`alike init --chunking {c}`"),
                }
            ),
            Kind::Restic => "repository v2, AES-256-CTR + Poly1305, compression auto (zstd), CDC ~1 MiB".into(),
            Kind::Borg => format!(
                "`{}`, compression {}, buzhash CDC ~2 MiB, files cache off for the re-run",
                self.borg_mode,
                self.compression.as_deref().unwrap_or("lz4 (default)")
            ),
        }
    }

    fn base(&self, repo: &Repo) -> Cmd {
        match self.kind {
            Kind::Alike => Cmd::new(&self.bin)
                .env("ALIKE_PASSWORD", PASSWORD)
                .arg("--store")
                .arg(&repo.dir)
                .arg("--cache-dir")
                .arg(&repo.cache)
                .arg("--quiet"),
            Kind::Restic => Cmd::new(&self.bin)
                .env("RESTIC_PASSWORD", PASSWORD)
                .env("RESTIC_REPOSITORY", &repo.dir)
                .env("RESTIC_CACHE_DIR", &repo.cache)
                .arg("--quiet"),
            Kind::Borg => Cmd::new(&self.bin)
                .env("BORG_PASSPHRASE", PASSWORD)
                .env("BORG_REPO", &repo.dir)
                .env("BORG_CACHE_DIR", repo.cache.join("cache"))
                .env("BORG_CONFIG_DIR", repo.cache.join("config"))
                .env("BORG_SECURITY_DIR", repo.cache.join("security"))
                .env("BORG_KEYS_DIR", repo.cache.join("keys"))
                .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
                .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes"),
        }
    }

    /// Creates the repository.
    pub(crate) fn init(&self, repo: &Repo) -> Cmd {
        match self.kind {
            Kind::Alike => match &self.chunking {
                None => self.base(repo).arg("init"),
                Some(c) => self.base(repo).args(["init", "--chunking", c]),
            },
            Kind::Restic => self.base(repo).arg("init"),
            Kind::Borg => self.base(repo).args(["init", "--encryption", &self.borg_mode]),
        }
    }

    /// Backs up `image` as snapshot/archive `name`. `reread` forces peers to
    /// read every byte again even if the file looks unchanged (restic
    /// `--force`, borg `--files-cache=disabled`); alike always reads a raw
    /// image in full (it has no change token).
    pub(crate) fn backup(&self, repo: &Repo, image: &Path, name: &str, reread: bool) -> Cmd {
        let dir = image.parent().unwrap_or(Path::new("/")).to_path_buf();
        let file = image.file_name().map(|f| f.to_os_string()).unwrap_or_default();
        match self.kind {
            Kind::Alike => self.base(repo).args(["backup", "--json", "--vm", "disk"]).arg(image),
            Kind::Restic => {
                let mut c = self.base(repo).args(["backup", "--host", "bench", "--tag", name]);
                if reread {
                    c = c.arg("--force");
                }
                c.arg(file).cwd(dir)
            }
            Kind::Borg => {
                let mut c = self.base(repo).arg("create");
                if let Some(comp) = &self.compression {
                    c = c.args(["--compression", comp]);
                }
                if reread {
                    c = c.arg("--files-cache=disabled");
                }
                c.arg(format!("::{name}")).arg(file).cwd(dir)
            }
        }
    }

    /// Restores the latest backup of `image` into `out_dir`; returns the
    /// command and where the restored file will be.
    pub(crate) fn restore(&self, repo: &Repo, image: &Path, name: &str, out_dir: &Path) -> (Cmd, PathBuf) {
        let file = image.file_name().map(|f| f.to_os_string()).unwrap_or_default();
        match self.kind {
            Kind::Alike => {
                let out = out_dir.join(&file);
                (self.base(repo).args(["restore", "latest", "--vm", "disk", "--output"]).arg(&out), out)
            }
            // restic keeps the path as backed up (relative to the cwd at backup time).
            Kind::Restic => (
                self.base(repo).args(["restore", "latest", "--tag", name, "--target"]).arg(out_dir),
                out_dir.join(&file),
            ),
            Kind::Borg => (
                self.base(repo).args(["extract", "--sparse"]).arg(format!("::{name}")).cwd(out_dir),
                out_dir.join(&file),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alike_per_chunking_first_primary() {
        let bin = Path::new("/nonexistent/alike");
        let plain = configured(bin, &[], false, false);
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].name, "alike");
        assert_eq!(plain[0].init(&Repo::new("/r".into())).argv()[4..], ["--quiet", "init"]);

        let specs = ["cdc".to_string(), "fixed".to_string()];
        let two = configured(bin, &specs, false, false);
        let names: Vec<&str> = two.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["alike (cdc)", "alike (fixed)"]);
        assert!(two.iter().all(|t| t.kind == Kind::Alike));
        let argv = two[1].init(&Repo::new("/r".into())).argv();
        assert_eq!(argv[argv.len() - 3..], ["init", "--chunking", "fixed"]);
        assert!(two[1].settings().contains("--chunking fixed"));
        // Backups and restores take no chunking: the store has it.
        let b = two[1].backup(&Repo::new("/r".into()), Path::new("/i/v1.img"), "v1", false).argv();
        assert!(!b.iter().any(|a| a == "--chunking"));
    }
}
