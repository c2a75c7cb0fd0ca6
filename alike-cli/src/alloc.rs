//! Process-wide allocator tuning for the command. (The library leaves this
//! to the program that embeds it; see the README's "Memory" note.)

/// Keeps glibc malloc to one arena unless the user chose otherwise.
///
/// glibc gives each thread that allocates its own arena. The engine's worker
/// and pack-finisher threads free each other's ~1 MiB frame buffers, and the
/// arenas fill with holes that small long-lived allocations then pin: a
/// 16 GiB backup peaked at 79 MiB with the default and at 51 MiB with one
/// arena, in the same time (`alike-bench`, scaling run). Contention on one
/// arena does not show: the engine allocates per frame, not per block.
#[allow(unsafe_code)]
pub(crate) fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let chosen = |v: &str| std::env::var_os(v).is_some();
        if chosen("MALLOC_ARENA_MAX") || chosen("GLIBC_TUNABLES") {
            return;
        }
        // SAFETY: mallopt only sets a glibc allocator parameter; it is called
        // first thing in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
