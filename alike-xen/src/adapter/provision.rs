//! Processors in a Xen pool: a VM cloned from the pool's processor template
//! for one job, implementing the provisioning seam
//! (`alike_core::provision`).
//!
//! [`XenProvisioner::make`] clones the template (`VM.clone`, on the
//! template's SR), tags the clone's `other_config` with `alike-job` and
//! `alike-orchestrator`, writes its network settings to `xenstore_data`
//! (`vm-data/alike/address`, `…/prefix`, `…/gateway`) and, when the
//! orchestrator injects one, its SSH host key (`vm-data/alike/host-key`: the
//! appliance's first-boot script installs it for sshd and removes it from
//! xenstore), and replaces the template's VIFs by one on the pool's network.
//! [`XenProcessor::attach`] makes a VBD per disk — `RO` for a backup's
//! snapshot, `RW` for a restore's target — tagged as the VM is, plugged at
//! once when the VM runs; `start` is `VM.start`; `teardown` shuts the VM
//! down, unplugs and destroys the job's VBDs, destroys the clone's own disks
//! and the VM. A backup's snapshot disk attached read-only is tagged too
//! (`VDI.other_config`). [`XenProvisioner::sweep`] finds every VM tagged
//! with the orchestrator's id and removes it the same way, then every
//! snapshot whose disk carries the tag (the snapshot VM and its disks).

use std::net::IpAddr;
use std::sync::Arc;

use alike_core::provision::{
    AttachDisk, Processor, ProcessorRequest, Provisioner, Reachable, SweepReport, TAG_JOB, TAG_ORCHESTRATOR,
};
use serde_json::{Value, json};

use super::error::{Context, PoolError, PoolResult};
use super::pool::{XenPool, text};

/// Where a processor's settings go in its `xenstore_data`.
pub const XENSTORE_PREFIX: &str = "vm-data/alike";

/// How a pool's processors are made.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct XenProcessorOptions {
    /// The pool's name (as the configuration file names it).
    pub pool: String,
    /// The processor template: name, uuid or ref.
    pub template: String,
    /// The network (name, uuid or ref) of the processors' VIF; `None`
    /// keeps the template's VIFs.
    pub network: Option<String>,
}

impl XenProcessorOptions {
    /// Processors of pool `pool` cloned from `template`.
    pub fn new(pool: impl Into<String>, template: impl Into<String>) -> XenProcessorOptions {
        XenProcessorOptions { pool: pool.into(), template: template.into(), network: None }
    }
}

/// Makes processors in a Xen pool (see the module documentation).
pub struct XenProvisioner {
    pool: Arc<XenPool>,
    o: XenProcessorOptions,
}

impl std::fmt::Debug for XenProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenProvisioner").field("options", &self.o).finish()
    }
}

impl XenProvisioner {
    /// The provisioner of one pool, over a logged-in [`XenPool`].
    pub fn new(pool: Arc<XenPool>, o: XenProcessorOptions) -> XenProvisioner {
        XenProvisioner { pool, o }
    }

    fn template(&self) -> PoolResult<String> {
        let is_template = |r: &super::pool::Raw| r.get("is_a_template").and_then(Value::as_bool) == Some(true);
        let all = self.pool.all_raw("VM").ctx(|| "listing VMs to find the processor template".into())?;
        let spec = &self.o.template;
        let found: Vec<&String> = all
            .iter()
            .filter(|(r, rec)| {
                is_template(rec)
                    && (*r == spec || text(rec, "uuid").eq_ignore_ascii_case(spec) || text(rec, "name_label") == *spec)
            })
            .map(|(r, _)| r)
            .collect();
        match found.as_slice() {
            [r] => Ok((*r).clone()),
            [] => Err(PoolError::NotFound { class: "template", spec: spec.clone(), hint: "" }),
            many => Err(PoolError::Ambiguous {
                class: "template",
                spec: spec.clone(),
                uuids: many.iter().filter_map(|r| all.get(*r)).map(|rec| text(rec, "uuid")).collect(),
            }),
        }
    }

    fn network(&self, spec: &str) -> PoolResult<String> {
        let all = self.pool.all_raw("network").ctx(|| "listing networks".into())?;
        let found: Vec<&String> = all
            .iter()
            .filter(|(r, rec)| {
                *r == spec || text(rec, "uuid").eq_ignore_ascii_case(spec) || text(rec, "name_label") == spec
            })
            .map(|(r, _)| r)
            .collect();
        match found.as_slice() {
            [r] => Ok((*r).clone()),
            [] => Err(PoolError::NotFound { class: "network", spec: spec.into(), hint: "" }),
            many => Err(PoolError::Ambiguous {
                class: "network",
                spec: spec.into(),
                uuids: many.iter().filter_map(|r| all.get(*r)).map(|rec| text(rec, "uuid")).collect(),
            }),
        }
    }

    fn call(&self, method: &str, params: &[Value], what: impl FnOnce() -> String) -> PoolResult<Value> {
        self.pool.client().call(method, params).ctx(what)
    }

    fn build(&self, req: &ProcessorRequest, p: &mut XenProcessor) -> PoolResult<()> {
        let template = self.template()?;
        let name = format!("alike-processor-{}", req.job);
        let vm = self.call("VM.clone", &[json!(template), json!(name)], || {
            format!("cloning the processor template for job {}", req.job)
        })?;
        let vm = vm.as_str().unwrap_or_default().to_string();
        p.vm = vm.clone();
        let tag = |k: &str, v: &str| -> PoolResult<()> {
            self.call("VM.add_to_other_config", &[json!(vm), json!(k), json!(v)], || {
                format!("tagging processor VM {vm}")
            })?;
            Ok(())
        };
        // A clone carries the template's tags: replace, not add.
        for k in [TAG_JOB, TAG_ORCHESTRATOR] {
            let _ = self.pool.client().call("VM.remove_from_other_config", &[json!(vm), json!(k)]);
        }
        tag(TAG_JOB, &req.job)?;
        tag(TAG_ORCHESTRATOR, &req.orchestrator)?;
        let mut data = vec![("address", req.address.to_string()), ("prefix", req.prefix.to_string())];
        if let Some(g) = req.gateway {
            data.push(("gateway", g.to_string()));
        }
        if let Some(k) = &req.host_key {
            data.push(("host-key", k.private_openssh().to_string()));
        }
        for (k, v) in data {
            let key = format!("{XENSTORE_PREFIX}/{k}");
            let _ = self.pool.client().call("VM.remove_from_xenstore_data", &[json!(vm), json!(key)]);
            self.call("VM.add_to_xenstore_data", &[json!(vm), json!(key), json!(v)], || {
                format!("setting {key} of processor VM {vm}")
            })?;
        }
        if let Some(n) = &self.o.network {
            let net = self.network(n)?;
            let vifs = self.call("VM.get_VIFs", &[json!(vm)], || format!("listing VIFs of {vm}"))?;
            for v in vifs.as_array().into_iter().flatten().filter_map(Value::as_str) {
                self.call("VIF.destroy", &[json!(v)], || format!("removing the template's VIF {v}"))?;
            }
            let rec = json!({
                "device": "0", "network": net, "VM": vm, "MAC": "", "MTU": 1500,
                "other_config": { TAG_JOB: req.job, TAG_ORCHESTRATOR: req.orchestrator },
                "qos_algorithm_type": "", "qos_algorithm_params": {},
            });
            self.call("VIF.create", &[rec], || format!("creating the VIF of processor VM {vm} on network {n}"))?;
        }
        Ok(())
    }
}

/// A processor VM made by a [`XenProvisioner`].
pub struct XenProcessor {
    pool: Arc<XenPool>,
    job: String,
    orchestrator: String,
    address: IpAddr,
    fingerprint: Option<String>,
    vm: String,
    vbds: Vec<String>,
    /// Snapshot disks tagged at attach, untagged at detach.
    tagged: Vec<String>,
    started: bool,
    torn_down: bool,
}

impl std::fmt::Debug for XenProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenProcessor").field("job", &self.job).field("vm", &self.vm).finish()
    }
}

impl XenProcessor {
    /// The processor VM's ref.
    pub fn vm(&self) -> &str {
        &self.vm
    }
}

fn seam(e: PoolError) -> alike_core::Error {
    alike_core::Error::seam(e)
}

impl Provisioner for XenProvisioner {
    fn pool(&self) -> &str {
        &self.o.pool
    }

    fn make(&self, req: &ProcessorRequest) -> alike_core::Result<Box<dyn Processor>> {
        let mut p = XenProcessor {
            pool: self.pool.clone(),
            job: req.job.clone(),
            orchestrator: req.orchestrator.clone(),
            address: req.address,
            fingerprint: req.host_key.as_ref().map(|k| k.fingerprint().to_string()),
            vm: String::new(),
            vbds: Vec::new(),
            tagged: Vec::new(),
            started: false,
            torn_down: false,
        };
        // On failure, dropping `p` removes what was made.
        self.build(req, &mut p).map_err(seam)?;
        Ok(Box::new(p))
    }

    fn sweep(&self, orchestrator: &str) -> alike_core::Result<SweepReport> {
        let all = self.pool.all_raw("VM").ctx(|| "listing VMs to find leftover processors".into()).map_err(seam)?;
        let mut report = SweepReport::default();
        for (r, rec) in all {
            let oc = rec.get("other_config").and_then(Value::as_object);
            let tag = |k: &str| oc.and_then(|m| m.get(k)).and_then(Value::as_str).unwrap_or_default().to_string();
            let is_template = rec.get("is_a_template").and_then(Value::as_bool) == Some(true);
            if is_template || tag(TAG_ORCHESTRATOR) != orchestrator {
                continue;
            }
            let job = tag(TAG_JOB);
            let mut p = XenProcessor {
                pool: self.pool.clone(),
                job: job.clone(),
                orchestrator: orchestrator.to_string(),
                address: IpAddr::from([0, 0, 0, 0]),
                fingerprint: None,
                vm: r.clone(),
                vbds: Vec::new(),
                tagged: Vec::new(),
                started: true,
                torn_down: false,
            };
            match p.remove() {
                Ok(()) => report.removed.push(format!("vm {} (job {job})", text(&rec, "uuid"))),
                Err(e) => report.failed.push(format!("vm {}: {e}", text(&rec, "uuid"))),
            }
        }
        self.sweep_snapshots(orchestrator, &mut report).map_err(seam)?;
        Ok(report)
    }
}

impl XenProvisioner {
    /// Destroys the snapshots whose disks a processor of `orchestrator`
    /// had attached (tagged by [`XenProcessor::attach`]): the snapshot VM
    /// and all its disks, as a failed in-process backup releases them.
    fn sweep_snapshots(&self, orchestrator: &str, report: &mut SweepReport) -> PoolResult<()> {
        let tagged = |rec: &super::pool::Raw, k: &str| {
            rec.get("other_config").and_then(|m| m.get(k)).and_then(Value::as_str).unwrap_or_default().to_string()
        };
        let vdis = self.pool.all_raw("VDI").ctx(|| "listing disks to find leftover snapshots".into())?;
        let vbds = self.pool.all_raw("VBD").ctx(|| "listing VBDs to find leftover snapshots".into())?;
        let mut snaps = std::collections::BTreeMap::<String, String>::new();
        for (r, rec) in &vdis {
            if rec.get("is_a_snapshot") != Some(&json!(true)) || tagged(rec, TAG_ORCHESTRATOR) != orchestrator {
                continue;
            }
            for vbd in vbds.values().filter(|b| text(b, "VDI") == *r) {
                let vm = text(vbd, "VM");
                if self.pool.raw("VM", &vm).is_ok_and(|v| v.get("is_a_snapshot") == Some(&json!(true))) {
                    snaps.insert(vm, tagged(rec, TAG_JOB));
                }
            }
        }
        for (vm, job) in snaps {
            let disks: Vec<String> = vbds
                .values()
                .filter(|b| text(b, "VM") == vm && text(b, "type") == "Disk")
                .map(|b| text(b, "VDI"))
                .filter(|v| v.starts_with("OpaqueRef:") && v != "OpaqueRef:NULL")
                .collect();
            let uuid = self.pool.raw("VM", &vm).map(|v| text(&v, "uuid")).unwrap_or_default();
            let w = self.pool.destroy_snapshot(&vm, &disks);
            if w.is_empty() {
                report.removed.push(format!("snapshot {uuid} (job {job})"));
            } else {
                report.failed.push(format!("snapshot {uuid}: {}", w.join("; ")));
            }
        }
        Ok(())
    }
}

impl XenProcessor {
    fn call(&self, method: &str, params: &[Value], what: impl FnOnce() -> String) -> PoolResult<Value> {
        self.pool.client().call(method, params).ctx(what)
    }

    /// Shuts the VM down; unplugs and destroys every VBD; destroys the
    /// clone's own disks (not the job's: those carry the job tag on their
    /// VBD, or are not the clone's); destroys the VM.
    fn remove(&mut self) -> PoolResult<()> {
        if self.vm.is_empty() {
            return Ok(());
        }
        let vm = self.vm.clone();
        let state = self.call("VM.get_power_state", &[json!(vm)], || format!("reading the power state of {vm}"))?;
        if state.as_str() != Some("Halted") {
            self.call("VM.hard_shutdown", &[json!(vm)], || format!("shutting processor VM {vm} down"))?;
        }
        let vbds = self.call("VM.get_VBDs", &[json!(vm)], || format!("listing VBDs of {vm}"))?;
        for vbd in vbds.as_array().into_iter().flatten().filter_map(Value::as_str) {
            let rec = self.pool.raw("VBD", vbd).ctx(|| format!("reading VBD {vbd}"))?;
            let ours = rec.get("other_config").and_then(Value::as_object).is_some_and(|m| m.get(TAG_JOB).is_some());
            if rec.get("currently_attached").and_then(Value::as_bool) == Some(true) {
                let _ = self.pool.client().call("VBD.unplug", &[json!(vbd)]);
            }
            let vdi = text(&rec, "VDI");
            self.call("VBD.destroy", &[json!(vbd)], || format!("removing VBD {vbd} of {vm}"))?;
            // The clone's own disks (copies of the template's) go with it.
            if !ours && text(&rec, "type") == "Disk" && vdi.starts_with("OpaqueRef:") && vdi != "OpaqueRef:NULL" {
                self.call("VDI.destroy", &[json!(vdi)], || format!("removing disk {vdi} of processor VM {vm}"))?;
            }
        }
        self.call("VM.destroy", &[json!(vm)], || format!("removing processor VM {vm}"))?;
        self.vbds.clear();
        Ok(())
    }
}

impl Processor for XenProcessor {
    fn job(&self) -> &str {
        &self.job
    }

    fn address(&self) -> IpAddr {
        self.address
    }

    fn attach(&mut self, disks: &[AttachDisk]) -> alike_core::Result<Vec<String>> {
        let mut out = Vec::new();
        for d in disks {
            let vdi = if d.id.starts_with("OpaqueRef:") {
                d.id.clone()
            } else {
                let r =
                    self.call("VDI.get_by_uuid", &[json!(d.id)], || format!("finding disk {}", d.id)).map_err(seam)?;
                r.as_str().unwrap_or_default().to_string()
            };
            let rec = json!({
                "VM": self.vm, "VDI": vdi, "userdevice": "autodetect", "bootable": false,
                "mode": if d.read_only { "RO" } else { "RW" }, "type": "Disk", "empty": false,
                "other_config": { TAG_JOB: self.job, TAG_ORCHESTRATOR: self.orchestrator },
                "qos_algorithm_type": "", "qos_algorithm_params": {},
            });
            let vbd = self
                .call("VBD.create", &[rec], || format!("attaching disk {} to processor VM {}", d.id, self.vm))
                .map_err(seam)?;
            let vbd = vbd.as_str().unwrap_or_default().to_string();
            self.vbds.push(vbd.clone());
            // A backup's snapshot disk carries the job's tags too, so that a
            // sweep finds the snapshot of an orchestrator that died.
            if d.read_only && self.pool.raw("VDI", &vdi).is_ok_and(|r| r.get("is_a_snapshot") == Some(&json!(true))) {
                for (k, v) in [(TAG_JOB, &self.job), (TAG_ORCHESTRATOR, &self.orchestrator)] {
                    let _ = self.pool.client().call("VDI.remove_from_other_config", &[json!(vdi), json!(k)]);
                    self.call("VDI.add_to_other_config", &[json!(vdi), json!(k), json!(v)], || {
                        format!("tagging snapshot disk {} with job {}", d.id, self.job)
                    })
                    .map_err(seam)?;
                }
                self.tagged.push(vdi.clone());
            }
            if self.started {
                self.call("VBD.plug", &[json!(vbd)], || format!("plugging disk {} into {}", d.id, self.vm))
                    .map_err(seam)?;
            }
            let ud = self.call("VBD.get_userdevice", &[json!(vbd)], || format!("reading VBD {vbd}")).map_err(seam)?;
            let n: u8 = ud.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
            out.push(format!("/dev/xvd{}", char::from(b'a' + n.min(25))));
        }
        Ok(out)
    }

    fn detach_all(&mut self) -> alike_core::Result<()> {
        for vbd in std::mem::take(&mut self.vbds) {
            if self.started {
                let _ = self.pool.client().call("VBD.unplug", &[json!(vbd)]);
            }
            self.call("VBD.destroy", &[json!(vbd)], || format!("detaching VBD {vbd}")).map_err(seam)?;
        }
        // Detached, a snapshot is the orchestrator's again: it keeps it as
        // the next incremental's change reference (which a sweep must not
        // take) or releases it at once.
        for vdi in std::mem::take(&mut self.tagged) {
            for k in [TAG_JOB, TAG_ORCHESTRATOR] {
                let _ = self.pool.client().call("VDI.remove_from_other_config", &[json!(vdi), json!(k)]);
            }
        }
        Ok(())
    }

    fn start(&mut self) -> alike_core::Result<Reachable> {
        self.call("VM.start", &[json!(self.vm), json!(false), json!(false)], || {
            format!("starting processor VM {}", self.vm)
        })
        .map_err(seam)?;
        self.started = true;
        let mut r = Reachable::new(self.address, 22);
        r.host_key_fingerprint = self.fingerprint.clone();
        Ok(r)
    }

    fn teardown(&mut self) -> alike_core::Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        self.remove().map_err(seam)
    }
}

impl Drop for XenProcessor {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
