//! The demo pool: one host, local storage, one network, dom0, a template,
//! and two VMs — `web-01` (running, two disks holding small ext4 file
//! systems, a CD drive, a NIC) and `db-01` (halted, one disk of
//! deterministic data, a NIC).

use std::process::Command;

use crate::error::Result;
use crate::records::Class;
use crate::state::{State, random_mac};
use crate::value::{NULL_REF, Value};

const MIB: i64 = 1 << 20;

fn map(pairs: &[(&str, &str)]) -> Value {
    Value::string_map(pairs.iter().copied())
}

/// Builds the demo pool into an empty state; `host_ip` is the host's (and
/// its management PIF's) address; `purpose` the network's NBD purpose.
pub(crate) fn populate(st: &mut State, host_ip: &str, purpose: &str) -> Result<()> {
    let host = st.add(
        Class::Host,
        [
            ("name_label", Value::s("xcp-sim-01")),
            ("name_description", Value::s("alike XAPI simulator host")),
            ("hostname", Value::s("xcp-sim-01")),
            ("address", Value::s(host_ip)),
            (
                "software_version",
                map(&[
                    ("product_brand", "XCP-ng"),
                    ("product_version", "8.3.0"),
                    ("platform_name", "XCP"),
                    ("platform_version", "3.4.0"),
                    ("xapi", "24.19"),
                    ("xen", "4.17.5"),
                    ("hostname", "xcp-sim-01"),
                ]),
            ),
            ("cpu_info", map(&[("cpu_count", "4"), ("vendor", "GenuineIntel")])),
        ],
    );
    let sr = st.add(
        Class::Sr,
        [
            ("name_label", Value::s("Local storage")),
            ("name_description", Value::s("Files on the simulator's state directory")),
            ("type", Value::s("ext")),
            ("content_type", Value::s("user")),
            ("physical_size", Value::Int(500 << 30)),
            (
                "allowed_operations",
                Value::strings([
                    "vdi_create",
                    "vdi_destroy",
                    "vdi_snapshot",
                    "vdi_clone",
                    "vdi_resize",
                    "vdi_enable_cbt",
                    "vdi_disable_cbt",
                    "vdi_data_destroy",
                    "vdi_list_changed_blocks",
                    "scan",
                ]),
            ),
        ],
    );
    st.add(
        Class::Pbd,
        [
            ("host", Value::s(host.as_str())),
            ("SR", Value::s(sr.as_str())),
            ("device_config", map(&[("device", "/dev/sdb")])),
        ],
    );
    let purposes: Vec<&str> = if purpose.is_empty() { vec![] } else { vec![purpose] };
    let net = st.add(
        Class::Network,
        [
            ("name_label", Value::s("Pool-wide network associated with eth0")),
            ("bridge", Value::s("xenbr0")),
            ("purpose", Value::strings(purposes)),
        ],
    );
    st.add(
        Class::Pif,
        [
            ("network", Value::s(net.as_str())),
            ("host", Value::s(host.as_str())),
            ("MAC", Value::s("52:54:00:12:34:56")),
            ("IP", Value::s(host_ip)),
        ],
    );
    st.add(
        Class::Pool,
        [
            ("name_label", Value::s("alike-sim pool")),
            ("master", Value::s(host.as_str())),
            ("default_SR", Value::s(sr.as_str())),
            ("suspend_image_SR", Value::s(sr.as_str())),
            ("crash_dump_SR", Value::s(sr.as_str())),
        ],
    );
    st.add(
        Class::Vm,
        [
            ("name_label", Value::s("Control domain on host: xcp-sim-01")),
            ("is_control_domain", Value::Bool(true)),
            ("power_state", Value::s("Running")),
            ("resident_on", Value::s(host.as_str())),
            ("domid", Value::Int(0)),
            ("memory_static_max", Value::Int(4096 * MIB)),
            ("memory_dynamic_max", Value::Int(4096 * MIB)),
            ("memory_dynamic_min", Value::Int(4096 * MIB)),
            ("memory_static_min", Value::Int(4096 * MIB)),
            ("VCPUs_max", Value::Int(4)),
            ("VCPUs_at_startup", Value::Int(4)),
            ("domain_type", Value::s("pv")),
        ],
    );
    st.add(
        Class::Vm,
        [
            ("name_label", Value::s("Debian Bookworm 12")),
            ("name_description", Value::s("To use this template from the CLI, install your VM using vm-install")),
            ("is_a_template", Value::Bool(true)),
            ("is_default_template", Value::Bool(true)),
            ("memory_static_max", Value::Int(2048 * MIB)),
            ("memory_dynamic_max", Value::Int(2048 * MIB)),
            ("memory_dynamic_min", Value::Int(2048 * MIB)),
            ("memory_static_min", Value::Int(512 * MIB)),
            ("HVM_boot_policy", Value::s("BIOS order")),
            ("HVM_boot_params", map(&[("order", "cdn")])),
            ("platform", map(&[("viridian", "false"), ("device-model", "qemu-upstream-compat")])),
            ("other_config", map(&[("linux_template", "true"), ("default_template", "true")])),
        ],
    );

    let web = vm(st, "web-01", "Web front end (demo)", 2, 1024);
    let root = disk(st, &sr, "web-01 root", 64 * MIB)?;
    let data = disk(st, &sr, "web-01 data", 32 * MIB)?;
    fill_ext4(st, &root, "root", 64)?;
    fill_ext4(st, &data, "data", 32)?;
    vbd(st, &web, &root, "0", true);
    vbd(st, &web, &data, "1", false);
    st.add(
        Class::Vbd,
        [
            ("VM", Value::s(web.as_str())),
            ("VDI", Value::s(NULL_REF)),
            ("userdevice", Value::s("3")),
            ("type", Value::s("CD")),
            ("mode", Value::s("RO")),
            ("empty", Value::Bool(true)),
        ],
    );
    vif(st, &web, &net, "0");
    st.vm_power(&web, "Running", "set")?;

    let db = vm(st, "db-01", "Database (demo)", 1, 512);
    let ddisk = disk(st, &sr, "db-01 disk", 48 * MIB)?;
    fill_pattern(st, &ddisk, 48 * MIB as u64)?;
    vbd(st, &db, &ddisk, "0", true);
    vif(st, &db, &net, "0");
    Ok(())
}

fn vm(st: &mut State, name: &str, description: &str, vcpus: i64, mem_mib: i64) -> String {
    st.add(
        Class::Vm,
        [
            ("name_label", Value::s(name)),
            ("name_description", Value::s(description)),
            ("memory_static_max", Value::Int(mem_mib * MIB)),
            ("memory_dynamic_max", Value::Int(mem_mib * MIB)),
            ("memory_dynamic_min", Value::Int(mem_mib * MIB)),
            ("memory_static_min", Value::Int(256 * MIB)),
            ("memory_target", Value::Int(mem_mib * MIB)),
            ("VCPUs_max", Value::Int(vcpus)),
            ("VCPUs_at_startup", Value::Int(vcpus)),
            ("VCPUs_params", map(&[("weight", "256")])),
            ("HVM_boot_policy", Value::s("BIOS order")),
            ("HVM_boot_params", map(&[("order", "cd"), ("firmware", "bios")])),
            (
                "platform",
                map(&[
                    ("viridian", "false"),
                    ("acpi", "1"),
                    ("apic", "true"),
                    ("pae", "true"),
                    ("nx", "true"),
                    ("device-model", "qemu-upstream-compat"),
                ]),
            ),
            (
                "other_config",
                map(&[("base_template_name", "Debian Bookworm 12"), ("install-methods", "cdrom,nfs,http,ftp")]),
            ),
            ("domain_type", Value::s("hvm")),
            ("tags", Value::strings(["demo"])),
        ],
    )
}

fn disk(st: &mut State, sr: &str, name: &str, size: i64) -> Result<String> {
    let mut args = std::collections::BTreeMap::new();
    for (k, v) in [
        ("name_label", Value::s(name)),
        ("name_description", Value::s("")),
        ("SR", Value::s(sr)),
        ("virtual_size", Value::Int(size)),
        ("type", Value::s("user")),
        ("sharable", Value::Bool(false)),
        ("read_only", Value::Bool(false)),
        ("other_config", Value::map()),
    ] {
        args.insert(k.to_owned(), v);
    }
    st.vdi_create(&args)
}

fn vbd(st: &mut State, vm: &str, vdi: &str, userdevice: &str, bootable: bool) {
    st.add(
        Class::Vbd,
        [
            ("VM", Value::s(vm)),
            ("VDI", Value::s(vdi)),
            ("userdevice", Value::s(userdevice)),
            ("bootable", Value::Bool(bootable)),
            ("type", Value::s("Disk")),
            ("mode", Value::s("RW")),
        ],
    );
}

fn vif(st: &mut State, vm: &str, net: &str, device: &str) {
    st.add(
        Class::Vif,
        [
            ("VM", Value::s(vm)),
            ("network", Value::s(net)),
            ("device", Value::s(device)),
            ("MAC", Value::s(random_mac())),
        ],
    );
}

/// A small ext4 file system with a few files, made with `mkfs.ext4 -d`;
/// deterministic data when mkfs.ext4 is not there.
fn fill_ext4(st: &mut State, vdi: &str, label: &str, size_mib: u64) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("alike-xapi-sim-demo-{}", crate::state::new_uuid()));
    let made = (|| -> std::io::Result<Vec<u8>> {
        let root = tmp.join("root");
        std::fs::create_dir_all(root.join("etc"))?;
        std::fs::create_dir_all(root.join("var/www"))?;
        std::fs::write(root.join("etc/hostname"), format!("{label}\n"))?;
        std::fs::write(root.join("etc/motd"), "Welcome to the alike XAPI simulator demo VM.\n")?;
        let mut page = String::new();
        for i in 0..2000 {
            page.push_str(&format!("<p>line {i} of the {label} demo page</p>\n"));
        }
        std::fs::write(root.join("var/www/index.html"), page)?;
        let mut blob = vec![0u8; 1 << 20];
        pattern(&mut blob, size_mib);
        std::fs::write(root.join("var/blob.bin"), blob)?;
        let img = tmp.join("fs.img");
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-d"])
            .arg(&root)
            .arg(&img)
            .arg(format!("{size_mib}M"))
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        std::fs::read(&img)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    match made {
        Ok(image) => {
            for (i, piece) in image.chunks(1 << 20).enumerate() {
                if piece.iter().any(|&b| b != 0) {
                    st.vdi_write(vdi, (i as u64) << 20, piece, false)?;
                }
            }
            Ok(())
        }
        Err(_) => fill_pattern(st, vdi, size_mib << 20),
    }
}

/// Deterministic data: every fourth MiB holds a pattern.
fn fill_pattern(st: &mut State, vdi: &str, size: u64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for mib in (0..size >> 20).step_by(4) {
        pattern(&mut buf, mib);
        st.vdi_write(vdi, mib << 20, &buf, false)?;
    }
    Ok(())
}

fn pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for (d, s) in chunk.iter_mut().zip(x.to_le_bytes()) {
            *d = s;
        }
    }
}
