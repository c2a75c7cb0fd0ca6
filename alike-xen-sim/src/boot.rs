//! Booted processors: with [`SimConfig::boot_processors`](crate::SimConfig),
//! starting a processor VM really starts a local processor, so an
//! orchestrator's real code runs end to end against the simulated pool.
//!
//! A *processor VM* is one whose `xenstore_data` holds
//! `vm-data/alike/address` — what alike's Xen provisioner writes on its
//! clone of the pool's processor template. What the appliance's first-boot
//! script does with those keys, `VM.start` does here:
//!
//! - `vm-data/alike/address`, `…/prefix` (default 24): the address of the
//!   guest's `eth0`, in a network namespace `axs<pid>d<domid>` on the
//!   simulator's bridge `axb<pid>`, which holds `…/gateway` (default: the
//!   network's first address) so this machine reaches the guest directly.
//! - `vm-data/alike/host-key`: installed as sshd's host key and then
//!   *removed from `xenstore_data`*, as the appliance's script does; without
//!   it, a key is made at boot (the orchestrator must then pin it by other
//!   means).
//! - sshd at the address, port 22, letting in [`BootProcessors::authorized_keys`]
//!   (what the template bakes in), sessions with `PATH` starting at a
//!   directory where `alike` is [`BootProcessors::alike`].
//! - **Disks**: every plugged VBD shows to the guest at
//!   `/dev/xvd<a + userdevice>` (userdevice 0 → `/dev/xvda`, 1 →
//!   `/dev/xvdb`…: what the provisioner tells the processor, and what the
//!   VBD's `device` field says). The guest's `/dev` is private to its sshd
//!   (a mount namespace: the usual character devices, and the disks); a
//!   disk is a sparse file copied from the VDI's chain at plug time and
//!   bound there, read-only for an `RO` VBD. An `RW` VBD's blocks that the
//!   guest changed are written back into the VDI at unplug and shutdown (as
//!   a guest's writes: CBT marks them).
//!
//! `VM.hard_shutdown`/`clean_shutdown` and `VM.destroy` stop the guest:
//! every process in its namespace is killed, the namespace and its files
//! are removed. Names carry the simulator's pid, so a simulator removes at
//! start what a killed one left, and dropping it stops every guest and
//! removes its bridge. Needs root, iproute2, OpenSSH's sshd and util-linux.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use alike_netns::{NamespaceSpec, SshdConfig};

use crate::error::{Error, Result};
use crate::records::Class;
use crate::state::State;
use crate::store::{CBT_BLOCK, ChainReader, VHD_BLOCK};
use crate::value::Value;

/// Where the provisioner's keys live in `xenstore_data`.
pub(crate) const XENSTORE_PREFIX: &str = "vm-data/alike";

/// What a booted processor needs from outside: the `alike` binary its
/// image would hold, and the login keys its template would hold.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BootProcessors {
    /// The `alike` binary, on the guests' `PATH` as `alike`.
    pub alike: PathBuf,
    /// OpenSSH public key lines allowed to log in (the template's
    /// `authorized_keys`).
    pub authorized_keys: String,
    /// The user they log in as (default `root`).
    pub user: String,
}

impl BootProcessors {
    /// Guests running `alike`, letting in the holders of `authorized_keys`.
    pub fn new(alike: impl Into<PathBuf>, authorized_keys: impl Into<String>) -> BootProcessors {
        BootProcessors { alike: alike.into(), authorized_keys: authorized_keys.into(), user: "root".into() }
    }
}

/// A guest that runs: what a simulated processor VM booted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BootedProcessor {
    /// The VM's ref.
    pub vm: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address.
    pub address: IpAddr,
    /// Its plugged disks: device path and VDI ref.
    pub disks: Vec<(String, String)>,
}

struct Plugged {
    device: String,
    vdi: String,
    file: PathBuf,
    read_only: bool,
}

struct Guest {
    netns: String,
    dir: PathBuf,
    address: IpAddr,
    sshd: Child,
    /// By VBD ref.
    disks: BTreeMap<String, Plugged>,
}

/// The simulator's booted guests.
pub(crate) struct Booter {
    cfg: BootProcessors,
    dir: PathBuf,
    pid: u32,
    bridge: String,
    guests: Mutex<BTreeMap<String, Guest>>,
}

impl std::fmt::Debug for Booter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Booter").field("bridge", &self.bridge).finish()
    }
}

fn boot_error(what: impl std::fmt::Display) -> Error {
    Error::api("INTERNAL_ERROR", [format!("booting the processor: {what}")])
}

/// What a VBD of a booting guest is.
pub(crate) struct VbdInfo {
    vbd: String,
    vdi: String,
    device: String,
    read_only: bool,
    reader: ChainReader,
}

/// What `VM.start` of a processor VM read from the state, under its lock.
pub(crate) struct BootPlan {
    vm: String,
    domid: i64,
    address: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
    host_key: Option<String>,
    disks: Vec<VbdInfo>,
}

/// The device a VBD's userdevice shows as in the guest.
pub(crate) fn device_of(userdevice: &str) -> Option<String> {
    userdevice.parse::<u8>().ok().filter(|n| *n < 26).map(|n| format!("/dev/xvd{}", char::from(b'a' + n)))
}

fn xs(rec: &BTreeMap<String, Value>, key: &str) -> Option<String> {
    rec.get("xenstore_data")
        .and_then(Value::as_struct)
        .and_then(|m| m.get(&format!("{XENSTORE_PREFIX}/{key}")))
        .and_then(Value::as_str)
        .map(str::to_string)
}

impl State {
    /// The guest a processor VM that has just started boots (its host key
    /// taken out of `xenstore_data`), or `None` for another VM.
    pub(crate) fn boot_plan(&mut self, vm: &str) -> Result<Option<BootPlan>> {
        let rec = self.record(Class::Vm, vm)?;
        let Some(address) = xs(&rec, "address") else { return Ok(None) };
        let parse = |what: &str, v: &str| boot_error(format!("{XENSTORE_PREFIX}/{what} = {v:?} is not valid"));
        let address: IpAddr = address.parse().map_err(|_| parse("address", &address))?;
        let prefix = match xs(&rec, "prefix") {
            Some(p) => p.parse().map_err(|_| parse("prefix", &p))?,
            None => 24,
        };
        let gateway = match xs(&rec, "gateway") {
            Some(g) => Some(g.parse().map_err(|_| parse("gateway", &g))?),
            None => None,
        };
        let host_key = xs(&rec, "host-key");
        if host_key.is_some() {
            // The first-boot script installs the key and takes it out of
            // xenstore, where the pool's administrators could read it.
            self.remove_from_map(Class::Vm, vm, "xenstore_data", &format!("{XENSTORE_PREFIX}/host-key"))?;
        }
        let domid = rec.get("domid").and_then(Value::as_int).unwrap_or(0);
        let mut disks = Vec::new();
        for vbd in self.where_eq(Class::Vbd, "VM", vm) {
            if let Some(d) = self.vbd_info(&vbd)? {
                disks.push(d);
            }
        }
        Ok(Some(BootPlan { vm: vm.to_string(), domid, address, prefix, gateway, host_key, disks }))
    }

    /// A plugged disk VBD's VDI and device, or `None` (an empty CD, unplugged).
    pub(crate) fn vbd_info(&self, vbd: &str) -> Result<Option<VbdInfo>> {
        let rec = self.record(Class::Vbd, vbd)?;
        let s = |f: &str| rec.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
        let attached = rec.get("currently_attached").and_then(Value::as_bool) == Some(true);
        let vdi = s("VDI");
        if !attached || s("type") != "Disk" || !self.exists(Class::Vdi, &vdi) {
            return Ok(None);
        }
        let Some(device) = device_of(&s("userdevice")) else { return Ok(None) };
        Ok(Some(VbdInfo {
            vbd: vbd.to_string(),
            reader: self.vdi_reader(&vdi)?,
            vdi,
            device,
            read_only: s("mode") == "RO",
        }))
    }
}

impl Booter {
    /// Removes what a killed simulator left, and readies the bridge's name.
    pub(crate) fn new(cfg: BootProcessors, state_dir: &Path) -> Result<Booter> {
        if let Some(why) = alike_netns::unavailable() {
            return Err(boot_error(why));
        }
        for ns in alike_netns::namespaces().map_err(boot_error)? {
            if alike_netns::owner(&ns, "axs").is_some_and(|p| !alike_netns::pid_alive(p)) {
                let _ = alike_netns::delete_namespace(&ns);
            }
        }
        for b in alike_netns::links("bridge").map_err(boot_error)? {
            if alike_netns::owner(&b, "axb").is_some_and(|p| !alike_netns::pid_alive(p)) {
                alike_netns::delete_link(&b);
            }
        }
        let dir = state_dir.join("processors");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let pid = std::process::id();
        Ok(Booter { cfg, dir, pid, bridge: format!("axb{pid}"), guests: Mutex::new(BTreeMap::new()) })
    }

    fn guests(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Guest>> {
        self.guests.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The guests that run now.
    pub(crate) fn booted(&self) -> Vec<BootedProcessor> {
        self.guests()
            .iter()
            .map(|(vm, g)| BootedProcessor {
                vm: vm.clone(),
                netns: g.netns.clone(),
                address: g.address,
                disks: g.disks.values().map(|d| (d.device.clone(), d.vdi.clone())).collect(),
            })
            .collect()
    }

    /// Boots the guest of `plan` (see the module documentation).
    pub(crate) fn boot(&self, plan: BootPlan) -> Result<()> {
        let netns = format!("axs{}d{}", self.pid, plan.domid);
        let dir = self.dir.join(&netns);
        let _ = alike_netns::delete_namespace(&netns);
        let _ = std::fs::remove_dir_all(&dir);
        let made = (|| -> std::result::Result<Guest, String> {
            for d in ["bin", "dev", "disks"] {
                std::fs::create_dir_all(dir.join(d)).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            std::os::unix::fs::symlink(&self.cfg.alike, dir.join("bin/alike")).map_err(|e| e.to_string())?;
            let gw = plan.gateway.unwrap_or_else(|| alike_netns::first_address(plan.address, plan.prefix));
            alike_netns::ensure_bridge(&self.bridge, gw, plan.prefix).map_err(|e| e.to_string())?;
            let spec = NamespaceSpec::new(
                &netns,
                &self.bridge,
                format!("axh{}d{}", self.pid, plan.domid),
                format!("axn{}d{}", self.pid, plan.domid),
                plan.address,
                plan.prefix,
            );
            alike_netns::add_namespace(&spec).map_err(|e| e.to_string())?;
            let key = dir.join("host_ed25519");
            let made = match &plan.host_key {
                Some(k) => alike_netns::install_key(&key, k),
                None => alike_netns::keygen(&key, &format!("alike-processor-{netns}")),
            };
            made.map_err(|e| e.to_string())?;
            let ak = dir.join("authorized_keys");
            std::fs::write(&ak, format!("{}\n", self.cfg.authorized_keys.trim())).map_err(|e| e.to_string())?;
            let mut c = SshdConfig::new(plan.address, &key, &ak, &self.cfg.user);
            c.set_env.push((
                "PATH".into(),
                format!("{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", dir.join("bin").display()),
            ));
            std::fs::write(dir.join("sshd_config"), c.render()).map_err(|e| e.to_string())?;
            let sshd = alike_netns::start_sshd(
                &netns,
                &dir.join("sshd_config"),
                &dir.join("sshd.log"),
                Some(&dir.join("dev")),
                Duration::from_secs(10),
            )
            .map_err(|e| e.to_string())?;
            Ok(Guest { netns: netns.clone(), dir: dir.clone(), address: plan.address, sshd, disks: BTreeMap::new() })
        })();
        let guest = match made {
            Ok(g) => g,
            Err(e) => {
                let _ = alike_netns::delete_namespace(&netns);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(boot_error(format!("VM {}: {e}", plan.vm)));
            }
        };
        self.guests().insert(plan.vm.clone(), guest);
        for d in plan.disks {
            if let Err(e) = self.plug(&plan.vm, d) {
                let _ = self.stop(&plan.vm, None);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Shows a plugged VBD's disk to the guest of `vm`, if it runs.
    pub(crate) fn plug(&self, vm: &str, d: VbdInfo) -> Result<()> {
        let mut guests = self.guests();
        let Some(g) = guests.get_mut(vm) else { return Ok(()) };
        let file = g.dir.join("disks").join(d.device.trim_start_matches("/dev/"));
        copy_out(&d.reader, &file)?;
        alike_netns::plug_device(g.sshd.id(), &g.dir.join("dev"), &d.device, &file, d.read_only)
            .map_err(|e| boot_error(format!("plugging {} into VM {vm}: {e}", d.vdi)))?;
        g.disks.insert(d.vbd, Plugged { device: d.device, vdi: d.vdi, file, read_only: d.read_only });
        Ok(())
    }

    /// Takes a VBD's disk from the guest of `vm` (writing back what it
    /// changed on an `RW` disk, through `state`).
    pub(crate) fn unplug(&self, vm: &str, vbd: &str, state: &Mutex<State>) -> Result<()> {
        let p = {
            let mut guests = self.guests();
            let Some(g) = guests.get_mut(vm) else { return Ok(()) };
            let Some(p) = g.disks.remove(vbd) else { return Ok(()) };
            alike_netns::unplug_device(g.sshd.id(), &g.dir.join("dev"), &p.device);
            p
        };
        let r = if p.read_only { Ok(()) } else { write_back(&p, state) };
        let _ = std::fs::remove_file(&p.file);
        r
    }

    /// Stops the guest of `vm`, if it runs: its `RW` disks written back
    /// (with `state`), every process in its namespace killed, the namespace
    /// and its files removed.
    pub(crate) fn stop(&self, vm: &str, state: Option<&Mutex<State>>) -> Result<()> {
        let Some(mut g) = self.guests().remove(vm) else { return Ok(()) };
        let mut r = Ok(());
        for (_, p) in std::mem::take(&mut g.disks) {
            alike_netns::unplug_device(g.sshd.id(), &g.dir.join("dev"), &p.device);
            if let (false, Some(st)) = (p.read_only, state) {
                r = r.and(write_back(&p, st));
            }
        }
        let _ = alike_netns::delete_namespace(&g.netns);
        let _ = g.sshd.kill();
        let _ = g.sshd.wait();
        let _ = std::fs::remove_dir_all(&g.dir);
        r
    }
}

impl Booter {
    /// Stops every guest (nothing written back) and removes the bridge.
    pub(crate) fn stop_all(&self) {
        let vms: Vec<String> = self.guests().keys().cloned().collect();
        for vm in vms {
            let _ = self.stop(&vm, None);
        }
        alike_netns::delete_link(&self.bridge);
    }
}

impl Drop for Booter {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Writes a VDI's chain into a sparse file of its size.
fn copy_out(reader: &ChainReader, file: &Path) -> Result<()> {
    let f = std::fs::File::create(file).map_err(Error::io(file))?;
    f.set_len(reader.size()).map_err(Error::io(file))?;
    let mut buf = vec![0u8; VHD_BLOCK as usize];
    for b in reader.allocated_blocks() {
        let off = b * VHD_BLOCK;
        let n = (reader.size() - off).min(VHD_BLOCK) as usize;
        reader.read_at(off, &mut buf[..n])?;
        if buf[..n].iter().any(|&x| x != 0) {
            f.write_all_at(&buf[..n], off).map_err(Error::io(file))?;
        }
    }
    Ok(())
}

/// Writes the 64 KiB blocks of a guest's disk file that differ from its
/// VDI back into the VDI.
fn write_back(p: &Plugged, state: &Mutex<State>) -> Result<()> {
    let f = std::fs::File::open(&p.file).map_err(Error::io(&p.file))?;
    let reader = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).vdi_reader(&p.vdi)?;
    let size = reader.size();
    let (mut mine, mut theirs) = (vec![0u8; CBT_BLOCK as usize], vec![0u8; CBT_BLOCK as usize]);
    let mut off = 0;
    while off < size {
        let n = (size - off).min(CBT_BLOCK) as usize;
        f.read_exact_at(&mut mine[..n], off).map_err(Error::io(&p.file))?;
        reader.read_at(off, &mut theirs[..n])?;
        if mine[..n] != theirs[..n] {
            let mut st = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            st.vdi_write(&p.vdi, off, &mine[..n], false)?;
        }
        off += n as u64;
    }
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).save()
}
