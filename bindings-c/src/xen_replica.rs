//! Replica VMs on a XenServer/XCP-ng pool (`docs/replica-xen.md`): replicate
//! a VM of one pool onto its replica VM on another (both ends in this
//! process), list the replica's points, test failover, failover, failback.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void};
use std::path::Path;
use std::sync::Arc;

use alike::{ReplicateOptions, XenReplicaOptions};

use crate::options::{Run, alike_cancel, alike_progress_fn, with_run};
use crate::replica::{alike_replica_point_list, alike_replicate_report};
use crate::store::alike_xen_pool;
use crate::{FfiResult, alike_result, arg_str, guard, invalid, need, opt_str, put};

/// A replica VM on a XenServer/XCP-ng pool, its key and record kept in a
/// state folder on this machine.
pub struct alike_xen_replica {
    inner: alike::XenReplicaVm,
}

/// What a failback did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct alike_xen_failback_report {
    /// Bytes read from the failed-over VM's disks.
    pub read_bytes: u64,
    /// Bytes of the chunks the original lacked.
    pub needed_bytes: u64,
    /// Bytes failback sent, as they would cross a link.
    pub sent_bytes: u64,
    /// The replica point the original was made live at again.
    pub replica_point: u64,
    /// Whether the original was started.
    pub started: bool,
}

/// # Safety
/// `p` NULL or live.
unsafe fn pool<'a>(p: *const alike_xen_pool, name: &str) -> FfiResult<&'a Arc<alike::XenPool>> {
    // SAFETY: NULL or live by contract.
    unsafe { p.as_ref() }.map(|p| &p.inner).ok_or_else(|| invalid(format!("{name} is NULL")))
}

/// # Safety
/// `r` NULL or live.
unsafe fn xen_replica<'a>(r: *const alike_xen_replica) -> FfiResult<&'a alike::XenReplicaVm> {
    // SAFETY: NULL or live by contract.
    unsafe { r.as_ref() }.map(|r| &r.inner).ok_or_else(|| invalid("replica is NULL"))
}

/// Copies a uuid (36 bytes) and its NUL into `out` (NULL: nothing).
///
/// # Safety
/// `out` NULL or writable for 37 bytes.
unsafe fn put_uuid(out: *mut c_char, uuid: &str) {
    if out.is_null() {
        return;
    }
    let b = uuid.as_bytes();
    let n = b.len().min(36);
    // SAFETY: writable for 37 bytes by contract.
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), out.cast::<u8>(), n);
        out.add(n).write(0);
    }
}

/// Point 0 means "the newest".
fn point_arg(point: u64) -> Option<u64> {
    (point != 0).then_some(point)
}

/// Replicates VM `vm` (name or uuid) of `source` onto its replica VM on
/// `target` — found by the source VM's uuid, or made from the VM's
/// configuration on storage repository `sr` with its NICs on `network`
/// (NULL: as recorded), named "VM (replica)" and blocked from starting.
/// Only what changed since the previous run (CBT) is read and only the
/// chunks the replica lacks are written; the replica's key, record and
/// history live under `state_dir` on this machine. `keep` > 0 keeps only the
/// newest `keep` points; `bwlimit` > 0 caps the bytes per second on the
/// (in-process) link. Progress counts bytes read. On success `*out` (may be
/// NULL) receives the report and `*out_replica` (may be NULL) the replica VM,
/// to free. On failure the replica is at its last point.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_xen_replicate(
    source: *const alike_xen_pool,
    vm: *const c_char,
    target: *const alike_xen_pool,
    sr: *const c_char,
    network: *const c_char,
    state_dir: *const c_char,
    keep: u32,
    bwlimit: u64,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out: *mut alike_replicate_report,
    out_replica: *mut *mut alike_xen_replica,
) -> alike_result {
    guard(|| unsafe {
        let src = pool(source, "source")?;
        let dst = pool(target, "target")?;
        let vm = arg_str(vm, "vm")?;
        let mut ro = XenReplicaOptions::new(arg_str(sr, "sr")?, arg_str(state_dir, "state_dir")?);
        if let Some(n) = opt_str(network, "network")? {
            ro = ro.network(n);
        }
        let run = Run::new(progress, user_data, cancel);
        let mut o = with_run!(ReplicateOptions::default(), run);
        if keep > 0 {
            o = o.keep(keep as usize);
        }
        if bwlimit > 0 {
            o = o.bwlimit(bwlimit);
        }
        let (rr, rep) = alike::replicate_xen(src, vm, Arc::clone(dst), &ro, &o)?;
        if !out.is_null() {
            out.write(alike_replicate_report {
                point: rr.point,
                time_ms: rr.time_ms,
                read_bytes: rr.read_bytes,
                needed_bytes: rr.needed_bytes,
                sent_bytes: rr.sent_bytes,
            });
        }
        if !out_replica.is_null() {
            out_replica.write(Box::into_raw(Box::new(alike_xen_replica { inner: rep })));
        }
        Ok(())
    })
}

/// Opens replica VM `vm` (name, uuid or ref) of `pool`, its key and record
/// kept under `state_dir`; free it with `alike_xen_replica_free`.
///
/// # Safety
/// Strings NUL-terminated; `pool` live; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_xen_replica_open(
    pool: *const alike_xen_pool,
    vm: *const c_char,
    state_dir: *const c_char,
    out: *mut *mut alike_xen_replica,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let p = self::pool(pool, "pool")?;
        let r =
            alike::XenReplicaVm::open(Arc::clone(p), arg_str(vm, "vm")?, Path::new(arg_str(state_dir, "state_dir")?))?;
        put(out, Box::into_raw(Box::new(alike_xen_replica { inner: r })), "out")
    })
}

/// Frees a replica VM handle (NULL is fine); the VM itself stays.
///
/// # Safety
/// `r` NULL or from `alike_xen_replicate`/`alike_xen_replica_open`, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_xen_replica_free(r: *mut alike_xen_replica) {
    unsafe { crate::free_box(r) }
}

/// The replica VM's uuid into `out` (36 bytes and a NUL).
///
/// # Safety
/// `r` live; `out` writable for 37 bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_xen_replica_uuid(r: *const alike_xen_replica, out: *mut c_char) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        put_uuid(out, xen_replica(r)?.uuid());
        Ok(())
    })
}

/// The replica VM's committed points, oldest first (the list type of
/// `alike_replica_points`; free it with `alike_replica_point_list_free`).
///
/// # Safety
/// `r` live; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_xen_replica_points(
    r: *const alike_xen_replica,
    out: *mut *mut alike_replica_point_list,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let points = xen_replica(r)?.points()?;
        put(out, Box::into_raw(Box::new(alike_replica_point_list::new(&points))), "out")
    })
}

/// Test failover: boots (when `start`) a copy of point `point` (0: the
/// newest) without NICs, or with its NICs on `network` (NULL: none; give
/// an isolated network); replication goes on meanwhile. `out_vm_uuid` (may
/// be NULL; 37 bytes) receives the test VM's uuid, `*out_point` (may be NULL)
/// the point it was made from. End it with `alike_xen_replica_end_test`.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_xen_replica_test_failover(
    r: *const alike_xen_replica,
    point: u64,
    network: *const c_char,
    start: bool,
    out_vm_uuid: *mut c_char,
    out_point: *mut u64,
) -> alike_result {
    guard(|| unsafe {
        let t = xen_replica(r)?.test_failover(point_arg(point), opt_str(network, "network")?, start)?;
        put_uuid(out_vm_uuid, &t.uuid);
        if !out_point.is_null() {
            out_point.write(t.point);
        }
        Ok(())
    })
}

/// Shuts down and destroys test failover VM `vm` (uuid or name) with its disks.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_xen_replica_end_test(r: *const alike_xen_replica, vm: *const c_char) -> alike_result {
    guard(|| unsafe {
        xen_replica(r)?.end_test(arg_str(vm, "vm")?)?;
        Ok(())
    })
}

/// Failover: makes the replica the live VM at point `point` (0: the
/// newest), its NICs moved from network `network_from[i]` (source network
/// uuid or name) to `network_to[i]` (a network of this pool) for each of
/// `network_count` pairs, started when `start`; no further replication
/// runs into it until failback. `*out_point` (may be NULL) receives the
/// point. Re-addressing inside the guest is out of scope.
///
/// # Safety
/// `network_from` and `network_to` hold `network_count` NUL-terminated
/// strings each (NULL when 0); other pointers as documented.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_xen_replica_failover(
    r: *const alike_xen_replica,
    point: u64,
    network_from: *const *const c_char,
    network_to: *const *const c_char,
    network_count: usize,
    start: bool,
    out_point: *mut u64,
) -> alike_result {
    guard(|| unsafe {
        let rep = xen_replica(r)?;
        let mut networks = BTreeMap::new();
        if network_count > 0 {
            if network_from.is_null() || network_to.is_null() {
                return Err(invalid("network_from or network_to is NULL with network_count > 0"));
            }
            let from = std::slice::from_raw_parts(network_from, network_count);
            let to = std::slice::from_raw_parts(network_to, network_count);
            for (i, (f, t)) in from.iter().zip(to).enumerate() {
                networks.insert(
                    arg_str(*f, &format!("network_from[{i}]"))?.to_owned(),
                    arg_str(*t, &format!("network_to[{i}]"))?.to_owned(),
                );
            }
        }
        let f = rep.failover(point_arg(point), &networks, start)?;
        if !out_point.is_null() {
            out_point.write(f.point);
        }
        Ok(())
    })
}

/// Failback: sends what changed on this failed-over VM back onto VM `vm`
/// of `original` (halted: the VM it was failed over from, or another with
/// disks of the same sizes) — only the chunks whose content differs — then
/// swaps roles: the original is live again (started when `start`), this VM
/// a replica of it again. `bwlimit` > 0 caps the bytes per second; progress
/// counts bytes read. `*out` (may be NULL) receives the report. On failure
/// the original is left a replica of this VM: run failback again.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_xen_replica_failback(
    r: *const alike_xen_replica,
    original: *const alike_xen_pool,
    vm: *const c_char,
    start: bool,
    bwlimit: u64,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out: *mut alike_xen_failback_report,
) -> alike_result {
    guard(|| unsafe {
        let rep = xen_replica(r)?;
        let orig = pool(original, "original")?;
        let vm = arg_str(vm, "vm")?;
        let run = Run::new(progress, user_data, cancel);
        let mut o = with_run!(ReplicateOptions::default(), run);
        if bwlimit > 0 {
            o = o.bwlimit(bwlimit);
        }
        let fb = rep.failback(Arc::clone(orig), vm, start, &o)?;
        if !out.is_null() {
            out.write(alike_xen_failback_report {
                read_bytes: fb.read_bytes,
                needed_bytes: fb.needed_bytes,
                sent_bytes: fb.sent_bytes,
                replica_point: fb.roles.replica_point,
                started: fb.roles.started,
            });
        }
        Ok(())
    })
}

/// Failback onto a new VM, when the VM this one was failed over from is
/// gone: makes a VM on `original` from this VM's configuration (its disks
/// on SR `sr`, its NICs on network `network` or, when NULL, on the networks
/// the source VM had there; named `name`, or the source VM's name when
/// NULL; tagged `alike-failback`), copies this VM's disks whole onto it,
/// then swaps roles: the new VM is live (started when `start`), this VM a
/// replica of it again. `bwlimit` > 0 caps the bytes per second; progress
/// counts bytes read. `*out` (may be NULL) receives the report. On failure
/// or cancel the new VM and its disks are removed and this VM is left as
/// it was.
///
/// # Safety
/// `network` and `name` NULL or NUL-terminated; other pointers as documented.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_xen_replica_failback_new_vm(
    r: *const alike_xen_replica,
    original: *const alike_xen_pool,
    sr: *const c_char,
    network: *const c_char,
    name: *const c_char,
    start: bool,
    bwlimit: u64,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out: *mut alike_xen_failback_report,
) -> alike_result {
    guard(|| unsafe {
        let rep = xen_replica(r)?;
        let orig = pool(original, "original")?;
        let mut new = alike::FailbackNewVm::new(arg_str(sr, "sr")?);
        new.network = opt_str(network, "network")?.map(str::to_owned);
        new.name = opt_str(name, "name")?.map(str::to_owned);
        let run = Run::new(progress, user_data, cancel);
        let mut o = with_run!(ReplicateOptions::default(), run);
        if bwlimit > 0 {
            o = o.bwlimit(bwlimit);
        }
        let fb = rep.failback_new_vm(Arc::clone(orig), &new, start, &o)?;
        if !out.is_null() {
            out.write(alike_xen_failback_report {
                read_bytes: fb.read_bytes,
                needed_bytes: fb.needed_bytes,
                sent_bytes: fb.sent_bytes,
                replica_point: fb.roles.replica_point,
                started: fb.roles.started,
            });
        }
        Ok(())
    })
}
