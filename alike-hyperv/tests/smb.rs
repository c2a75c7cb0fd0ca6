//! A checkpoint's disk chain read from the simulated host's share over SMB
//! (a real Samba smbd) with `VhdxSource::open_in`: the same bytes as the
//! chain read locally.

use std::time::Instant;

use alike_core::DiskSource as _;
use alike_hyperv::smb::{SmbShare, share_path};
use alike_hyperv::vhdx::{OpenOptions, VhdxSource};
use alike_hyperv::wsman::{Arg, Client, ConnectOptions, Embedded};
use alike_hyperv_sim::{SimConfig, Simulator};

const USER: &str = "hvadmin";
const PASSWORD: &str = "S3cret!&<x>";

fn smbd_here() -> bool {
    // smbd lives in /usr/sbin, often off a user's PATH.
    let found = ["/usr/sbin/smbd", "/usr/bin/smbd"].iter().any(|p| std::path::Path::new(p).exists());
    if !found {
        alike_testing::skip("smbd is not installed (Debian package samba; bash scripts/test.sh installs it)");
    }
    found
}

#[test]
fn a_checkpoint_chain_reads_over_smb_as_locally() {
    if !smbd_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim =
        Simulator::start(SimConfig::new(dir.path()).demo(true).credentials(USER, PASSWORD).smb_port(Some(0))).unwrap();
    let smb = sim.smb_addr().unwrap();
    let c = Client::connect(&ConnectOptions::new(&sim.url(), USER, PASSWORD)).unwrap();
    let vm = c.query("SELECT * FROM Msvm_ComputerSystem WHERE ElementName = 'web-01'").unwrap().remove(0).epr.unwrap();
    let svc = c.query("SELECT * FROM Msvm_VirtualSystemSnapshotService").unwrap().remove(0).epr.unwrap();
    let settings = Embedded::new("Msvm_VirtualSystemSnapshotSettingData").prop("ConsistencyLevel", "uint8", "1");
    c.invoke(
        &svc,
        "CreateSnapshot",
        &[
            ("AffectedSystem", Arg::Ref(vm.clone())),
            ("SnapshotSettings", Arg::Embedded(settings)),
            ("SnapshotType", Arg::Text("32768".into())),
        ],
        &|| false,
    )
    .unwrap();
    let vm_id = vm.selector("Name").unwrap().to_owned();
    sim.guest_write(&vm_id, 0, (7 << 20) + 512, &[0xab; 3000]).unwrap();

    let share = SmbShare::connect(&smb.ip().to_string(), smb.port(), "C$", USER, PASSWORD).unwrap();
    for d in sim.disks(&vm_id).unwrap() {
        let (name, path) = share_path(&d.win_path).unwrap();
        assert_eq!(name, "C$");
        let t0 = Instant::now();
        let remote = VhdxSource::open_in(&path, &share, &OpenOptions::default()).unwrap();
        assert_eq!(remote.layers().len(), 2, "the AVHDX and its frozen parent");
        let mut a = vec![0u8; d.size as usize];
        remote.read_at(0, &mut a).unwrap();
        let smb_time = t0.elapsed();
        let t1 = Instant::now();
        let local = VhdxSource::open(&d.local_path).unwrap();
        let mut b = vec![0u8; d.size as usize];
        local.read_at(0, &mut b).unwrap();
        let local_time = t1.elapsed();
        assert!(a == b, "{path}: SMB and local reads differ");
        assert_eq!(remote.allocated_ranges().unwrap(), local.allocated_ranges().unwrap());
        eprintln!("{path}: {} MiB over SMB in {smb_time:?}, locally in {local_time:?}", d.size >> 20);
    }
    assert_eq!(&sim.read_disk(&vm_id, 0, (7 << 20) + 512, 4).unwrap(), &[0xab; 4]);

    match SmbShare::connect(&smb.ip().to_string(), smb.port(), "C$", USER, "wrong") {
        Err(alike_hyperv::Error::Network { what, .. }) => assert_eq!(what, "connecting and authenticating"),
        other => panic!("{other:?}"),
    }
}
