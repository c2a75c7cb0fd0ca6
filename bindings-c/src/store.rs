//! The store handle and its operations.

use std::ffi::{c_char, c_void};

use alike::{
    BackupOptions, ImageFormat, MaintenanceOptions, RestoreOptions, RetentionPolicy, VaultOptions, VerifyOptions,
};

use crate::options::{Run, alike_cancel, alike_progress_fn, alike_store_options, with_run};
use crate::version::{alike_version, alike_version_list};
use crate::{FfiResult, alike_result, arg_str, guard, invalid, need, opt_str, put};

/// An open store. Safe to use from several threads at once.
pub struct alike_store {
    /// Shared with the NBD servers it starts (they may outlive the handle).
    pub(crate) inner: std::sync::Arc<alike::Store>,
}

/// Figures about a store.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct alike_stats {
    /// Versions.
    pub versions: u64,
    /// Sum over versions of their disks' data bytes.
    pub logical_bytes: u64,
    /// Plaintext bytes of the unique data.
    pub unique_bytes: u64,
    /// Bytes of all objects in the store.
    pub stored_bytes: u64,
    /// Number of packs.
    pub packs: u64,
}

/// A retention policy: how many versions each rule keeps (0 = rule off).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct alike_retention {
    /// The newest N versions.
    pub keep_last: u32,
    /// The newest version of each of the last N hours that have one.
    pub keep_hourly: u32,
    /// … days.
    pub keep_daily: u32,
    /// … weeks.
    pub keep_weekly: u32,
    /// … months.
    pub keep_monthly: u32,
    /// … years.
    pub keep_yearly: u32,
}

/// # Safety
/// `opts` NULL or live; strings NUL-terminated or NULL.
unsafe fn builder(opts: *const alike_store_options, passphrase: *const c_char) -> FfiResult<alike::StoreBuilder> {
    // SAFETY: NULL or live by contract.
    let mut b = unsafe { opts.as_ref() }.map(|o| o.builder.clone()).unwrap_or_else(alike::Store::builder);
    if let Some(p) = unsafe { opt_str(passphrase, "passphrase")? } {
        b.passphrase(p);
    }
    Ok(b)
}

/// # Safety
/// `store` NULL or live.
pub(crate) unsafe fn store<'a>(store: *const alike_store) -> FfiResult<&'a alike::Store> {
    // SAFETY: NULL or live by contract.
    unsafe { store.as_ref() }.map(|s| &*s.inner).ok_or_else(|| invalid("store is NULL"))
}

/// Creates a store at `path` — a folder that must not hold one, or a URL
/// (`s3://bucket/prefix`, S3 settings from the `AWS_*` environment). `passphrase`
/// may be NULL only with a key file or no encryption in `opts` (NULL = defaults).
///
/// # Safety
/// Strings NUL-terminated (or NULL where allowed); `opts` NULL or live; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_create(
    path: *const c_char,
    passphrase: *const c_char,
    opts: *const alike_store_options,
    out: *mut *mut alike_store,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let path = arg_str(path, "path")?;
        let s = builder(opts, passphrase)?.create_at(path)?;
        put(out, Box::into_raw(Box::new(alike_store { inner: std::sync::Arc::new(s) })), "out")
    })
}

/// Opens the store at `path` (a folder or URL).
///
/// # Safety
/// As [`alike_store_create`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_open(
    path: *const c_char,
    passphrase: *const c_char,
    opts: *const alike_store_options,
    out: *mut *mut alike_store,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let path = arg_str(path, "path")?;
        let s = builder(opts, passphrase)?.open_at(path)?;
        put(out, Box::into_raw(Box::new(alike_store { inner: std::sync::Arc::new(s) })), "out")
    })
}

/// Closes a store (NULL is fine). No operation on it may be running.
///
/// # Safety
/// `store` is NULL or from libalike, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_free(store: *mut alike_store) {
    unsafe { crate::free_box(store) }
}

/// Backs up `image_count` disk images (raw files or block devices, VHD,
/// VHDX/AVHDX: detected by signature) as the disks of VM `vm`, building on
/// its latest version; only allocated data is read. On success, `*out`
/// (if `out` is not NULL) receives the new version; free it.
///
/// # Safety
/// `images` points to `image_count` NUL-terminated strings; other pointers as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_backup(
    store: *const alike_store,
    vm: *const c_char,
    images: *const *const c_char,
    image_count: usize,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out: *mut *mut alike_version,
) -> alike_result {
    guard(|| unsafe {
        let s = self::store(store)?;
        let vm = arg_str(vm, "vm")?;
        if images.is_null() || image_count == 0 {
            return Err(invalid("images is NULL or empty: a backup needs at least one disk"));
        }
        let paths = std::slice::from_raw_parts(images, image_count)
            .iter()
            .enumerate()
            .map(|(i, p)| arg_str(*p, &format!("images[{i}]")))
            .collect::<FfiResult<Vec<&str>>>()?;
        let run = Run::new(progress, user_data, cancel);
        let r = s.backup_images(vm, &paths, &with_run!(BackupOptions::default(), run))?;
        if !out.is_null() {
            out.write(Box::into_raw(Box::new(alike_version::new(r.version))));
        }
        Ok(())
    })
}

/// The versions of VM `vm` (every VM when NULL), oldest first.
///
/// # Safety
/// Pointers as documented; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_versions(
    store: *const alike_store,
    vm: *const c_char,
    out: *mut *mut alike_version_list,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let s = self::store(store)?;
        let items = s.versions(opt_str(vm, "vm")?)?.into_iter().map(alike_version::new).collect();
        put(out, Box::into_raw(Box::new(alike_version_list { items })), "out")
    })
}

/// Finds a version by id, unique id prefix, or "latest" (of `vm`, when not NULL).
///
/// # Safety
/// Pointers as documented; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_find_version(
    store: *const alike_store,
    spec: *const c_char,
    vm: *const c_char,
    out: *mut *mut alike_version,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let s = self::store(store)?;
        let v = s.version(arg_str(spec, "spec")?, opt_str(vm, "vm")?)?;
        put(out, Box::into_raw(Box::new(alike_version::new(v))), "out")
    })
}

/// An image file format to restore to.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum alike_image_format {
    /// A sparse raw image (or a block device).
    ALIKE_IMAGE_RAW = 0,
    /// A dynamic VHD (XenServer).
    ALIKE_IMAGE_VHD = 1,
    /// A dynamic VHDX (Hyper-V).
    ALIKE_IMAGE_VHDX = 2,
}

/// Restores disk `disk` of `version` to the raw image file `output` (written
/// to a temporary name and renamed into place when complete).
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_restore(
    store: *const alike_store,
    version: *const alike_version,
    disk: u32,
    output: *const c_char,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
) -> alike_result {
    unsafe {
        alike_store_restore_image(
            store,
            version,
            disk,
            output,
            alike_image_format::ALIKE_IMAGE_RAW as u32,
            progress,
            user_data,
            cancel,
        )
    }
}

/// As [`alike_store_restore`], writing the image in `format` (an
/// `alike_image_format` value).
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_store_restore_image(
    store: *const alike_store,
    version: *const alike_version,
    disk: u32,
    output: *const c_char,
    format: u32,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
) -> alike_result {
    guard(|| unsafe { restore_inner(store, version, disk, output, format, 0, progress, user_data, cancel) })
}

/// `alike_store_restore_ex` flags: replace an existing output file.
pub const ALIKE_RESTORE_FORCE: u32 = 1;
/// `alike_store_restore_ex` flags: go on past damage (zeroes where blocks
/// are unreadable); the call then fails with `ALIKE_ERR_CORRUPTION` after
/// writing everything else, naming the ranges in the message.
pub const ALIKE_RESTORE_PARTIAL: u32 = 2;

/// As [`alike_store_restore_image`], with `flags` (a bitwise OR of
/// `ALIKE_RESTORE_*`). The older restore functions refuse an existing output
/// file; this one replaces it with `ALIKE_RESTORE_FORCE`.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_store_restore_ex(
    store: *const alike_store,
    version: *const alike_version,
    disk: u32,
    output: *const c_char,
    format: u32,
    flags: u32,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
) -> alike_result {
    guard(|| unsafe { restore_inner(store, version, disk, output, format, flags, progress, user_data, cancel) })
}

#[allow(clippy::too_many_arguments)]
unsafe fn restore_inner(
    store: *const alike_store,
    version: *const alike_version,
    disk: u32,
    output: *const c_char,
    format: u32,
    flags: u32,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
) -> FfiResult {
    unsafe {
        let s = self::store(store)?;
        let v = version.as_ref().ok_or_else(|| invalid("version is NULL"))?;
        let output = arg_str(output, "output")?;
        // A plain integer, not the enum type: C may pass any value.
        let format = match format {
            0 => ImageFormat::Raw,
            1 => ImageFormat::Vhd,
            2 => ImageFormat::Vhdx,
            n => return Err(invalid(format!("format {n} is not an alike_image_format"))),
        };
        if flags & !(ALIKE_RESTORE_FORCE | ALIKE_RESTORE_PARTIAL) != 0 {
            return Err(invalid(format!("flags {flags:#x} holds bits that are not ALIKE_RESTORE_*")));
        }
        let run = Run::new(progress, user_data, cancel);
        let o = RestoreOptions::default()
            .format(format)
            .force(flags & ALIKE_RESTORE_FORCE != 0)
            .partial(flags & ALIKE_RESTORE_PARTIAL != 0);
        let r = s.restore_to_file(&v.inner, disk, output, &with_run!(o, run))?;
        if let Some(e) = r.first_error {
            return Err(crate::Failure::corruption(format!(
                "{} byte range(s) could not be restored (zeroes written): {e}",
                r.failed_ranges.len()
            )));
        }
        Ok(())
    }
}

/// Checks the store: structure and index, or every byte when `full`.
/// `*out_damaged` receives how many damaged objects or chunks were found
/// (0 = healthy); damage is not an error.
///
/// # Safety
/// Pointers as documented; `out_damaged` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_verify(
    store: *const alike_store,
    full: bool,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out_damaged: *mut u64,
) -> alike_result {
    guard(|| unsafe {
        need(out_damaged, "out_damaged")?;
        let s = self::store(store)?;
        let run = Run::new(progress, user_data, cancel);
        let r = s.verify(&with_run!(VerifyOptions::default().full(full), run))?;
        put(out_damaged, r.damaged.len() as u64, "out_damaged")
    })
}

/// Figures about the store.
///
/// # Safety
/// Pointers as documented; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_stats(store: *const alike_store, out: *mut alike_stats) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let st = self::store(store)?.stats()?;
        put(
            out,
            alike_stats {
                versions: st.versions,
                logical_bytes: st.logical_bytes,
                unique_bytes: st.unique_bytes,
                stored_bytes: st.stored_bytes,
                packs: st.packs,
            },
            "out",
        )
    })
}

/// Applies `policy` to the versions of `vm` (every VM when NULL) and removes
/// those no rule keeps (pinned versions stay), unless `dry_run`.
/// `*out_removed` (if not NULL) receives how many were (or would be) removed.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_prune(
    store: *const alike_store,
    vm: *const c_char,
    policy: *const alike_retention,
    dry_run: bool,
    out_removed: *mut u64,
) -> alike_result {
    guard(|| unsafe {
        let s = self::store(store)?;
        let p = policy.as_ref().ok_or_else(|| invalid("policy is NULL"))?;
        let rp = RetentionPolicy::default()
            .last(p.keep_last)
            .hourly(p.keep_hourly)
            .daily(p.keep_daily)
            .weekly(p.keep_weekly)
            .monthly(p.keep_monthly)
            .yearly(p.keep_yearly);
        let r = s.prune(opt_str(vm, "vm")?, &rp, dry_run)?;
        let n =
            if dry_run { r.decisions.iter().flat_map(|(_, d)| d).filter(|d| !d.keep).count() } else { r.removed.len() };
        if !out_removed.is_null() {
            out_removed.write(n as u64);
        }
        Ok(())
    })
}

/// Frees the space of data no version references. `*out_bytes_freed` (if
/// not NULL) receives the bytes freed.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_gc(
    store: *const alike_store,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out_bytes_freed: *mut u64,
) -> alike_result {
    guard(|| unsafe {
        let s = self::store(store)?;
        let run = Run::new(progress, user_data, cancel);
        let r = s.gc(&with_run!(MaintenanceOptions::default(), run))?;
        if !out_bytes_freed.is_null() {
            out_bytes_freed.write(r.bytes_freed);
        }
        Ok(())
    })
}

/// Copies versions of `store` into `vault` (Offsite Vaulting): every
/// version of `vm` (every VM when NULL), or only the newest `last` of each
/// VM when `last` > 0; only what the vault lacks is sent, sealed with the
/// vault's own key. `*out_copied` and `*out_sent_bytes` (each may be NULL)
/// receive the versions copied and the bytes added to the vault.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_store_vault(
    store: *const alike_store,
    vault: *const alike_store,
    vm: *const c_char,
    last: usize,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out_copied: *mut u64,
    out_sent_bytes: *mut u64,
) -> alike_result {
    guard(|| unsafe {
        let s = self::store(store)?;
        let v = vault.as_ref().map(|v| &*v.inner).ok_or_else(|| invalid("vault is NULL"))?;
        let run = Run::new(progress, user_data, cancel);
        let mut o = with_run!(VaultOptions::default(), run);
        if let Some(vm) = opt_str(vm, "vm")? {
            o = o.vm(vm);
        }
        if last > 0 {
            o = o.last(last);
        }
        let r = s.vault(v, &o)?;
        if !out_copied.is_null() {
            out_copied.write(r.copied.len() as u64);
        }
        if !out_sent_bytes.is_null() {
            out_sent_bytes.write(r.sent_bytes);
        }
        Ok(())
    })
}

/// Writes a write-only key file to `output` (mode 0600; never over an
/// existing file): opened with it (`alike_store_options_set_key_file`), the
/// store backs up but cannot restore (`ALIKE_ERR_WRITE_ONLY_KEY`). The
/// store must have been made with `alike_store_options_set_writer_keys` and
/// be open with its full key.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_add_writer_key(store: *const alike_store, output: *const c_char) -> alike_result {
    guard(|| unsafe {
        self::store(store)?.add_writer_key(arg_str(output, "output")?)?;
        Ok(())
    })
}

/// Removes one version (by id or unique prefix); its data goes at the next gc.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_forget(store: *const alike_store, version: *const c_char) -> alike_result {
    guard(|| unsafe {
        let s = self::store(store)?;
        let v = s.version(arg_str(version, "version")?, None)?;
        s.forget(&v.id)?;
        Ok(())
    })
}

/// Protects a version from prune and forget.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_pin(store: *const alike_store, version: *const c_char) -> alike_result {
    guard(|| unsafe {
        self::store(store)?.pin(arg_str(version, "version")?)?;
        Ok(())
    })
}

/// Removes a pin.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_unpin(store: *const alike_store, version: *const c_char) -> alike_result {
    guard(|| unsafe {
        self::store(store)?.unpin(arg_str(version, "version")?)?;
        Ok(())
    })
}

/// A logged-in session with a XenServer/XCP-ng pool (XAPI).
pub struct alike_xen_pool {
    // Shared: a replica VM opened on this pool keeps it alive.
    pub(crate) inner: std::sync::Arc<alike::XenPool>,
}

/// Logs in to the pool at `url` (`https://pool-master`) as `user` with
/// `password`; `fingerprint` (SHA-256 hex of the pool certificate, or NULL)
/// pins a self-signed certificate. Free the pool with `alike_xen_pool_free`.
///
/// # Safety
/// Strings NUL-terminated (fingerprint may be NULL); `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_xen_pool_connect(
    url: *const c_char,
    user: *const c_char,
    password: *const c_char,
    fingerprint: *const c_char,
    out: *mut *mut alike_xen_pool,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let p = alike::xen_pool(
            arg_str(url, "url")?,
            arg_str(user, "user")?,
            arg_str(password, "password")?,
            opt_str(fingerprint, "fingerprint")?,
        )?;
        put(out, Box::into_raw(Box::new(alike_xen_pool { inner: std::sync::Arc::new(p) })), "out")
    })
}

/// Logs out and frees a pool (NULL is fine).
///
/// # Safety
/// `pool` is NULL or from `alike_xen_pool_connect`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_xen_pool_free(pool: *mut alike_xen_pool) {
    unsafe { crate::free_box(pool) }
}

/// Backs up the VM `vm` (name or uuid) of `pool`: a snapshot, then only the
/// blocks changed since the last backup (CBT) — or everything, deduplicated,
/// when the change chain is broken. `*out_incremental_disks` and
/// `*out_full_disks` (each may be NULL) receive how many disks were read
/// each way; `*out` (may be NULL) the new version, to free.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_store_backup_xen(
    store: *const alike_store,
    pool: *const alike_xen_pool,
    vm: *const c_char,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out_incremental_disks: *mut u32,
    out_full_disks: *mut u32,
    out: *mut *mut alike_version,
) -> alike_result {
    guard(|| unsafe {
        let s = self::store(store)?;
        let p = pool.as_ref().map(|p| &*p.inner).ok_or_else(|| invalid("pool is NULL"))?;
        let vm = arg_str(vm, "vm")?;
        let run = Run::new(progress, user_data, cancel);
        let r = s.backup_vm(p, vm, &with_run!(BackupOptions::default(), run))?;
        let inc = r.disks.iter().filter(|d| d.incremental).count() as u32;
        if !out_incremental_disks.is_null() {
            out_incremental_disks.write(inc);
        }
        if !out_full_disks.is_null() {
            out_full_disks.write(r.disks.len() as u32 - inc);
        }
        if !out.is_null() {
            out.write(Box::into_raw(Box::new(alike_version::new(r.backup.version))));
        }
        Ok(())
    })
}

/// Recreates `version` as a new VM on `pool` from its recorded
/// configuration, its disks uploaded to the storage repository `sr` (name
/// or uuid) and its NICs on `network` (name or uuid; NULL = as recorded).
/// `out_vm_uuid` (may be NULL) receives the new VM's uuid, 37 bytes with the NUL.
///
/// # Safety
/// Pointers as documented; `out_vm_uuid` NULL or writable for 37 bytes.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_store_restore_xen_vm(
    store: *const alike_store,
    version: *const alike_version,
    pool: *const alike_xen_pool,
    sr: *const c_char,
    network: *const c_char,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out_vm_uuid: *mut c_char,
) -> alike_result {
    guard(|| unsafe {
        let s = self::store(store)?;
        let v = version.as_ref().ok_or_else(|| invalid("version is NULL"))?;
        let p = pool.as_ref().map(|p| &*p.inner).ok_or_else(|| invalid("pool is NULL"))?;
        let run = Run::new(progress, user_data, cancel);
        let mut place = alike::Placement::on(arg_str(sr, "sr")?);
        if let Some(n) = opt_str(network, "network")? {
            place = place.network(n);
        }
        let r = s.restore_vm(&v.inner, p, &place, &with_run!(RestoreOptions::default(), run))?;
        if !out_vm_uuid.is_null() {
            let b = r.vm_uuid.as_bytes();
            let n = b.len().min(36);
            std::ptr::copy_nonoverlapping(b.as_ptr(), out_vm_uuid.cast::<u8>(), n);
            out_vm_uuid.add(n).write(0);
        }
        Ok(())
    })
}

/// A connected Hyper-V host (WMI over WinRM; its disks over SMB).
pub struct alike_hyperv_host {
    inner: alike::HyperVHost,
}

/// Connects to the Hyper-V host at `url` (`http://host:5985/wsman`: NTLM
/// with message encryption; `https://host:5986/wsman`: TLS with the
/// certificate pinned by `fingerprint`, SHA-256 hex) as `user` with
/// `password`, its administrative share on `smb_port` (0 = 445) with the
/// same credentials. Free the host with `alike_hyperv_host_free`.
///
/// # Safety
/// Strings NUL-terminated (fingerprint may be NULL); `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_hyperv_host_connect(
    url: *const c_char,
    user: *const c_char,
    password: *const c_char,
    smb_port: u16,
    fingerprint: *const c_char,
    out: *mut *mut alike_hyperv_host,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let mut o =
            alike::HyperVHostOptions::new(arg_str(url, "url")?, arg_str(user, "user")?, arg_str(password, "password")?);
        o.smb_port(if smb_port == 0 { 445 } else { smb_port });
        if let Some(fp) = opt_str(fingerprint, "fingerprint")? {
            o.wsman.server_cert(alike::HyperVCertCheck::pin(fp).map_err(alike::Error::from)?);
        }
        let h = alike::HyperVHost::connect(&o).map_err(alike::Error::from)?;
        put(out, Box::into_raw(Box::new(alike_hyperv_host { inner: h })), "out")
    })
}

/// Frees a host (NULL is fine).
///
/// # Safety
/// `host` is NULL or from `alike_hyperv_host_connect`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_hyperv_host_free(host: *mut alike_hyperv_host) {
    unsafe { crate::free_box(host) }
}

/// Backs up the VM `vm` (name or id) of `host`: a recovery checkpoint, its
/// disks read over SMB — only the ranges RCT says changed since the last
/// backup, or everything, deduplicated, when the RCT chain is broken.
/// `*out_incremental_disks` and `*out_full_disks` (each may be NULL)
/// receive how many disks were read each way; `*out` (may be NULL) the new
/// version, to free.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_store_backup_hyperv(
    store: *const alike_store,
    host: *const alike_hyperv_host,
    vm: *const c_char,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out_incremental_disks: *mut u32,
    out_full_disks: *mut u32,
    out: *mut *mut alike_version,
) -> alike_result {
    guard(|| unsafe {
        let s = self::store(store)?;
        let h = host.as_ref().map(|h| &h.inner).ok_or_else(|| invalid("host is NULL"))?;
        let vm = arg_str(vm, "vm")?;
        let run = Run::new(progress, user_data, cancel);
        let r = s.backup_vm(h, vm, &with_run!(BackupOptions::default(), run))?;
        let inc = r.disks.iter().filter(|d| d.incremental).count() as u32;
        if !out_incremental_disks.is_null() {
            out_incremental_disks.write(inc);
        }
        if !out_full_disks.is_null() {
            out_full_disks.write(r.disks.len() as u32 - inc);
        }
        if !out.is_null() {
            out.write(Box::into_raw(Box::new(alike_version::new(r.backup.version))));
        }
        Ok(())
    })
}

/// Recreates `version` (of a Hyper-V VM, or of a Xen VM: its configuration
/// mapped) as a new VM on `host`: VHDX files in the host's folder `path`
/// (`C:\...`), NICs on the virtual switch `switch_name` (NULL = the
/// recorded switches). `out_vm_id` (may be NULL) receives the new VM's id,
/// 37 bytes with the NUL.
///
/// # Safety
/// Pointers as documented; `out_vm_id` NULL or writable for 37 bytes.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_store_restore_hyperv_vm(
    store: *const alike_store,
    version: *const alike_version,
    host: *const alike_hyperv_host,
    path: *const c_char,
    switch_name: *const c_char,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out_vm_id: *mut c_char,
) -> alike_result {
    guard(|| unsafe {
        let s = self::store(store)?;
        let v = version.as_ref().ok_or_else(|| invalid("version is NULL"))?;
        let h = host.as_ref().map(|h| &h.inner).ok_or_else(|| invalid("host is NULL"))?;
        let run = Run::new(progress, user_data, cancel);
        let mut place = alike::Placement::on(arg_str(path, "path")?);
        if let Some(n) = opt_str(switch_name, "switch_name")? {
            place = place.network(n);
        }
        let r = s.restore_vm(&v.inner, h, &place, &with_run!(RestoreOptions::default(), run))?;
        if !out_vm_id.is_null() {
            let b = r.vm_uuid.as_bytes();
            let n = b.len().min(36);
            std::ptr::copy_nonoverlapping(b.as_ptr(), out_vm_id.cast::<u8>(), n);
            out_vm_id.add(n).write(0);
        }
        Ok(())
    })
}
