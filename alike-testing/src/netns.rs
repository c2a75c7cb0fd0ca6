//! Local processors: network namespaces on this machine, each with its own
//! address and its own OpenSSH server — hosts as far as the network can
//! tell, for tests of jobs over SSH and of two-processor replication.
//!
//! A [`ProcessorNet`] is a bridge in the root namespace with address
//! `10.A.B.1/24` (the orchestrator's side); each
//! [`ProcessorNet::add_processor`] makes a namespace whose `eth0` (one end
//! of a veth pair, the other end on the bridge) has `10.A.B.N/24`, brings up
//! its loopback, and starts [`Sshd`] at `10.A.B.N:22` inside it. The
//! namespaces reach each other and the root namespace through the bridge
//! (no forwarding, no NAT: the root namespace's routes are untouched). The
//! file system is shared: a processor's "attached disks" are files here.
//!
//! Names carry the creating process's id (`alkb<pid>`, `alkp<pid>n<N>`),
//! so a [`ProcessorNet::new`] removes what a killed earlier test run left
//! (the process gone), and dropping the net removes everything it made
//! (also when a test panics: `Drop` runs while unwinding). Needs root and
//! `ip` (iproute2).

use std::process::Command;

use alike_netns::NamespaceSpec;

use crate::sshd::{Sshd, run};

/// A bridge and the processors on it. Dropping it stops their sshd and
/// deletes the namespaces, veth pairs and the bridge.
#[derive(Debug)]
pub struct ProcessorNet {
    bridge: String,
    tag: String,
    prefix: String,
    net: (u8, u8),
    processors: Vec<LocalProcessor>,
    next: u8,
}

/// One processor: a namespace with an address and an sshd.
#[derive(Debug)]
pub struct LocalProcessor {
    /// The namespace's name (`ip netns exec NAME …`).
    pub netns: String,
    /// Its address on the bridge.
    pub address: String,
    /// Its SSH server, listening at `address`:22.
    pub sshd: Sshd,
}

fn ip(args: &[&str]) -> String {
    alike_netns::ip(args).unwrap_or_else(|e| panic!("{e}"))
}

use alike_netns::{ip_quiet, owner, pid_alive};

/// Removes namespaces and bridges left by test runs whose process is gone.
fn remove_leftovers() {
    for line in ip(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if owner(name, "alkp").is_some_and(|p| !pid_alive(p)) {
            ip_quiet(&["netns", "del", name]);
        }
    }
    for name in alike_netns::links("bridge").unwrap_or_default() {
        if owner(&name, "alkb").is_some_and(|p| !pid_alive(p)) {
            ip_quiet(&["link", "del", &name]);
        }
    }
}

impl ProcessorNet {
    /// A new bridge on a free `10.A.B.0/24`. `None` (after
    /// [`crate::skip`]) when this is not root, `ip netns` does not work, or
    /// sshd is missing.
    pub fn new() -> Option<ProcessorNet> {
        if let Some(why) = crate::sshd::unavailable() {
            crate::skip(&why);
            return None;
        }
        let root = run(Command::new("id").arg("-u")).trim() == "0";
        let works = root && Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success());
        if !works {
            crate::skip("network namespaces need root and iproute2 (`ip netns`)");
            return None;
        }
        remove_leftovers();
        let pid = std::process::id();
        let n = PROCESSOR_NETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < 26, "at most 26 processor nets per test process");
        let used = ip(&["-o", "-4", "addr", "show"]);
        // A /24 that no interface here uses, picked from the pid so that
        // concurrent test processes start at different places, and from
        // the net's number so that concurrent tests of one process do.
        let start = pid as usize + n as usize * 257;
        let net = (0..200 * 256)
            .map(|i| {
                let n = (start + i) % (200 * 256);
                (100 + (n / 256) as u8 % 100, (n % 256) as u8)
            })
            .find(|(a, b)| !used.contains(&format!(" 10.{a}.{b}.")))
            .expect("a free 10.x.y.0/24");
        // Interface names are at most 15 bytes: `alkv` + pid (≤ 7 digits) +
        // a letter per net + the processor's number (≤ 3 digits).
        let tag = format!("{pid}{}", char::from(b'a' + n as u8));
        let bridge = format!("alkb{tag}");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let me = ProcessorNet {
            bridge,
            tag: tag.clone(),
            prefix: format!("alkp{tag}p"),
            net,
            processors: Vec::new(),
            next: 2,
        };
        ip(&["addr", "add", &format!("10.{}.{}.1/24", net.0, net.1), "dev", &me.bridge]);
        ip(&["link", "set", &me.bridge, "up"]);
        Some(me)
    }

    /// The root namespace's address on the bridge (the orchestrator's).
    pub fn host_address(&self) -> String {
        format!("10.{}.{}.1", self.net.0, self.net.1)
    }

    /// Makes one more processor: a namespace at the next address, with its
    /// sshd at that address, port 22.
    ///
    /// # Panics
    /// When a step fails (test setup), naming it.
    pub fn add_processor(&mut self) -> &LocalProcessor {
        assert!(self.next < 255, "at most 253 processors on one net");
        let i = self.next;
        self.next += 1;
        let ns = format!("{}{i}", self.prefix);
        let address = format!("10.{}.{}.{i}", self.net.0, self.net.1);
        let host_end = format!("alkv{}{i}", self.tag);
        let ns_end = format!("alkw{}{i}", self.tag);
        let spec = NamespaceSpec::new(&ns, &self.bridge, host_end, ns_end, address.parse().expect("an address"), 24);
        alike_netns::add_namespace(&spec).unwrap_or_else(|e| panic!("{e}"));
        let sshd = match Sshd::start_at(Some(&ns), &address, 22) {
            Ok(s) => s,
            Err(e) => {
                ip_quiet(&["netns", "del", &ns]);
                panic!("{e}");
            }
        };
        self.processors.push(LocalProcessor { netns: ns, address, sshd });
        self.processors.last().expect("just pushed")
    }

    /// The processors made so far.
    pub fn processors(&self) -> &[LocalProcessor] {
        &self.processors
    }
}

static PROCESSOR_NETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for ProcessorNet {
    fn drop(&mut self) {
        for p in &mut self.processors {
            p.sshd.stop();
            ip_quiet(&["netns", "del", &p.netns]);
        }
        ip_quiet(&["link", "del", &self.bridge]);
    }
}
