//! Integration tests of the simulator: RPC over HTTP with a plain client,
//! CBT bookkeeping, export/import checked against qemu-img and our VHD
//! reader, NBD with qemu-img as the client, fault injection.

mod common {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    use alike_xen_sim::{Class, SimConfig, Simulator, Value};

    pub(crate) fn sim() -> (Simulator, tempfile::TempDir) {
        sim_with(|c| c)
    }

    pub(crate) fn sim_with(f: impl FnOnce(SimConfig) -> SimConfig) -> (Simulator, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = f(SimConfig::new(dir.path()).demo(true).data_destroy_wait(std::time::Duration::from_millis(200)));
        (Simulator::start(cfg).unwrap(), dir)
    }

    /// One HTTP/1.1 request with `Connection: close`; returns status, head and body.
    pub(crate) fn http(
        addr: SocketAddr,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding") || k.eq_ignore_ascii_case("content-length"))
        {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let _ = s.write_all(body);
        // Half-close, as Xen Orchestra does after an upload of unannounced length.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("no head") + 4;
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        let status = head[9..12].parse().unwrap();
        (status, head, out[split..].to_vec())
    }

    /// One request over HTTPS, trusting only the simulator's certificate
    /// (checked for the name `localhost`); returns status and body.
    pub(crate) fn https(sim: &Simulator, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from_pem_slice(sim.cert_pem().as_bytes()).unwrap()).unwrap();
        let cfg =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(sim.addr()).unwrap());
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).unwrap();
        tls.write_all(body).unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("no head") + 4;
        (String::from_utf8_lossy(&out[9..12]).parse().unwrap(), out[split..].to_vec())
    }

    /// A JSON-RPC call; returns the parsed reply.
    pub(crate) fn jsonrpc(addr: SocketAddr, body: serde_json::Value) -> serde_json::Value {
        let (status, _, b) =
            http(addr, "POST", "/jsonrpc", &[("Content-Type", "application/json")], body.to_string().as_bytes());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
        serde_json::from_slice(&b).unwrap()
    }

    pub(crate) fn s(v: &str) -> Value {
        Value::s(v)
    }

    pub(crate) fn disks(sim: &Simulator, session: &str, vm: &str) -> Vec<String> {
        let vbds = sim.call("VM.get_VBDs", vec![s(session), s(vm)]).unwrap();
        let mut out = Vec::new();
        for b in vbds.as_array().unwrap() {
            let rec = sim.call("VBD.get_record", vec![s(session), b.clone()]).unwrap();
            let rec = rec.as_struct().unwrap();
            if rec["type"].as_str() == Some("Disk") {
                out.push((rec["userdevice"].as_str().unwrap().to_owned(), rec["VDI"].as_str().unwrap().to_owned()));
            }
        }
        out.sort();
        out.into_iter().map(|(_, v)| v).collect()
    }

    pub(crate) fn web(sim: &Simulator) -> String {
        sim.lookup(Class::Vm, "web-01").unwrap()
    }

    pub(crate) fn code(e: alike_xen_sim::Error) -> (String, Vec<String>) {
        e.to_xapi()
    }

    /// Bits set in a CBT bitmap (MSB first).
    pub(crate) fn bits(b: &[u8]) -> Vec<u64> {
        (0..b.len() as u64 * 8).filter(|i| b[(i / 8) as usize] & (0x80 >> (i % 8)) != 0).collect()
    }
}

mod rpc {
    use super::common::*;
    use alike_xen_sim::{Class, SimConfig, Simulator, Value};
    use serde_json::json;

    #[test]
    fn jsonrpc_v1_and_v2_shapes() {
        let (sim, _d) = sim();
        let a = sim.addr();
        let login = jsonrpc(a, json!({"method": "session.login_with_password", "params": ["root", "alike"], "id": 1}));
        assert_eq!(login["error"], serde_json::Value::Null);
        let session = login["result"].as_str().unwrap().to_owned();
        assert!(session.starts_with("OpaqueRef:"));
        // v2 success: no "error" member.
        let vms = jsonrpc(a, json!({"jsonrpc": "2.0", "method": "VM.get_all_records", "params": [session], "id": "x"}));
        assert!(vms.get("error").is_none());
        let recs = vms["result"].as_object().unwrap();
        let names: Vec<&str> = recs.values().map(|r| r["name_label"].as_str().unwrap()).collect();
        assert!(names.contains(&"web-01") && names.contains(&"db-01"));
        // Ints are JSON numbers.
        let web = recs.iter().find(|(_, r)| r["name_label"] == "web-01").unwrap().1;
        assert_eq!(web["memory_static_max"], json!(1024 << 20));
        assert_eq!(web["VCPUs_max"], json!(2));
        // v2 error object, v1 error array.
        let e2 = jsonrpc(
            a,
            json!({"jsonrpc": "2.0", "method": "VM.get_record", "params": [session, "OpaqueRef:nope"], "id": 2}),
        );
        assert_eq!(e2["error"], json!({"code": 1, "message": "HANDLE_INVALID", "data": ["VM", "OpaqueRef:nope"]}));
        assert!(e2.get("result").is_none());
        let e1 = jsonrpc(a, json!({"method": "VM.get_record", "params": [session, "OpaqueRef:nope"], "id": 3}));
        assert_eq!(e1["error"], json!(["HANDLE_INVALID", "VM", "OpaqueRef:nope"]));
        assert_eq!(e1["result"], serde_json::Value::Null);
        let unknown = jsonrpc(a, json!({"method": "VM.frobnicate", "params": [session], "id": 4}));
        assert_eq!(unknown["error"], json!(["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]));
        let count = jsonrpc(a, json!({"method": "VM.get_record", "params": [session], "id": 5}));
        assert_eq!(count["error"], json!(["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record", "2", "1"]));
        let uuid = jsonrpc(a, json!({"method": "VM.get_by_uuid", "params": [session, "0000"], "id": 6}));
        assert_eq!(uuid["error"], json!(["UUID_INVALID", "VM", "0000"]));
        let bad = jsonrpc(a, json!({"method": "session.login_with_password", "params": ["root", "wrong"], "id": 7}));
        assert_eq!(bad["error"][0], "SESSION_AUTHENTICATION_FAILED");
        // Logout invalidates the session.
        jsonrpc(a, json!({"method": "session.logout", "params": [session], "id": 8}));
        let after = jsonrpc(a, json!({"method": "VM.get_all", "params": [session], "id": 9}));
        assert_eq!(after["error"], json!(["SESSION_INVALID", session]));
    }

    #[test]
    fn blocked_start_and_revert_to_a_snapshot() {
        let (sim, _d) = sim();
        let a = sim.addr();
        let call =
            |method: &str, params: serde_json::Value| jsonrpc(a, json!({"method": method, "params": params, "id": 1}));
        let s = call("session.login_with_password", json!(["root", "alike"]))["result"].as_str().unwrap().to_owned();
        let db = sim.lookup(Class::Vm, "db-01").unwrap();
        let vdi = sim.lookup(Class::Vdi, "db-01 disk").unwrap();
        // A blocked start is refused with XAPI's error, naming the VM and the entry's value.
        call("VM.set_blocked_operations", json!([s, db, {"start": "alike-replica"}]));
        let e = call("VM.start", json!([s, db, false, false]));
        assert_eq!(e["error"], json!(["OPERATION_BLOCKED", db, "alike-replica"]));
        assert_eq!(sim.field(Class::Vm, &db, "power_state").unwrap(), Value::s("Halted"));
        // A snapshot, then writes and a changed other_config; revert brings both back.
        let before = sim.read_vdi(&vdi, 0, 1 << 20).unwrap();
        call("VM.add_to_other_config", json!([s, db, "mark", "at-snapshot"]));
        let snap = call("VM.snapshot", json!([s, db, "db-01 point"]))["result"].as_str().unwrap().to_owned();
        call("VM.remove_from_other_config", json!([s, db, "mark"]));
        call("VM.set_blocked_operations", json!([s, db, {}]));
        sim.guest_write(&vdi, 4096, &[9u8; 8192]).unwrap();
        assert_ne!(sim.read_vdi(&vdi, 0, 1 << 20).unwrap(), before);
        let e = call("VM.revert", json!([s, db]));
        assert_eq!(e["error"][0], "VM_NOT_A_SNAPSHOT");
        let r = call("VM.revert", json!([s, snap]));
        assert_eq!(r["error"], serde_json::Value::Null, "{r}");
        // The VM's disk is a new VDI holding the snapshot's data; the old one is gone.
        let vbds = call("VM.get_VBDs", json!([s, db]))["result"].as_array().unwrap().clone();
        let disk: Vec<String> = vbds
            .iter()
            .filter(|v| sim.field(Class::Vbd, v.as_str().unwrap(), "type").unwrap() == Value::s("Disk"))
            .map(|v| sim.field(Class::Vbd, v.as_str().unwrap(), "VDI").unwrap().as_str().unwrap().to_owned())
            .collect();
        assert_eq!(disk.len(), 1);
        assert_ne!(disk[0], vdi);
        assert!(sim.field(Class::Vdi, &vdi, "uuid").is_none(), "the written VDI is destroyed");
        assert_eq!(sim.read_vdi(&disk[0], 0, 1 << 20).unwrap(), before);
        let oc = call("VM.get_other_config", json!([s, db]))["result"].clone();
        assert_eq!(oc["mark"], "at-snapshot");
        let blocked = call("VM.get_blocked_operations", json!([s, db]))["result"].clone();
        assert_eq!(blocked, json!({"start": "alike-replica"}), "the snapshot's blocked operations come back");
        // The snapshot still reads as it did, and a running VM cannot be reverted.
        sim.set_power_state(&db, "Running").unwrap();
        let e = call("VM.revert", json!([s, snap]));
        assert_eq!(e["error"][0], "VM_BAD_POWER_STATE");
    }

    #[test]
    fn https_with_the_host_certificate() {
        let (sim, _d) = sim_with(|c| c.tls(true));
        assert!(sim.url().starts_with("https://"));
        let body =
            json!({"jsonrpc": "2.0", "method": "session.login_with_password", "params": ["root", "alike"], "id": 1});
        let (status, reply) = https(&sim, "POST", "/jsonrpc", body.to_string().as_bytes());
        assert_eq!(status, 200);
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        let session = reply["result"].as_str().unwrap().to_owned();
        let call = alike_xen_sim::method_call("VM.get_all", &[Value::s(&session)]);
        let (status, reply) = https(&sim, "POST", "/", call.as_bytes());
        assert_eq!(status, 200);
        let v = alike_xen_sim::parse_method_response(&reply).unwrap();
        assert_eq!(v.as_struct().unwrap()["Status"], Value::s("Success"));
        let vdi = disks(&sim, &session, &web(&sim))[1].clone();
        let (status, data) =
            https(&sim, "GET", &format!("/export_raw_vdi?session_id={session}&vdi={vdi}&format=raw"), b"");
        assert_eq!(status, 200);
        assert!(data == sim.read_vdi(&vdi, 0, 32 << 20).unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn starts_and_stops_inside_an_async_runtime() {
        let (sim, _d) = sim();
        let url = sim.url();
        let s = tokio::task::spawn_blocking(move || {
            let s = sim.login().unwrap();
            (sim, s)
        })
        .await
        .unwrap();
        assert!(s.1.starts_with("OpaqueRef:"), "{url}");
        drop(s.0);
    }

    #[test]
    fn delays_slow_every_call() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let d = std::time::Duration::from_millis(300);
        sim.faults().set_delay(Some(d));
        let t = std::time::Instant::now();
        sim.call("VM.get_all", vec![Value::s(&s)]).unwrap();
        assert!(t.elapsed() >= d);
        sim.faults().clear();
        let t = std::time::Instant::now();
        sim.call("VM.get_all", vec![Value::s(&s)]).unwrap();
        assert!(t.elapsed() < d);
    }

    #[test]
    fn malformed_requests_get_xapi_500_pages() {
        let (sim, _d) = sim();
        let (status, head, body) = http(
            sim.addr(),
            "POST",
            "/jsonrpc",
            &[],
            br#"{"jsonrpc":"2.0","method":"session.login_with_password","id":0}"#,
        );
        assert_eq!(status, 500);
        assert!(head.to_ascii_lowercase().contains("content-type: text/html"));
        assert!(String::from_utf8_lossy(&body).contains("Jsonrpc.Malformed_method_request"));
        let xml = "<?xml version=\"1.0\"?><methodCall><methodName>session.logout</methodName></methodCall>";
        let (status, _, body) = http(sim.addr(), "POST", "/", &[("Content-Type", "text/xml")], xml.as_bytes());
        assert_eq!(status, 500);
        assert!(String::from_utf8_lossy(&body).contains("Xmlrpc.Parse_error"));
    }

    #[test]
    fn xmlrpc_routes_by_longest_prefix_and_sends_ints_as_strings() {
        let (sim, _d) = sim();
        let session = sim.login().unwrap();
        let vdi = disks(&sim, &session, &web(&sim))[0].clone();
        for path in ["/", "/RPC2", "/xmlrpc"] {
            let call = alike_xen_sim::method_call("VDI.get_virtual_size", &[Value::s(&session), Value::s(&vdi)]);
            let (status, head, body) = http(sim.addr(), "POST", path, &[("Content-Type", "text/xml")], call.as_bytes());
            assert_eq!(status, 200, "{path}");
            assert!(head.to_ascii_lowercase().contains("text/xml"));
            let v = alike_xen_sim::parse_method_response(&body).unwrap();
            let m = v.as_struct().unwrap();
            assert_eq!(m["Status"], Value::s("Success"));
            assert_eq!(m["Value"], Value::s((64u64 << 20).to_string()));
        }
    }

    #[test]
    fn sessions_expire_and_slaves_redirect() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SimConfig::new(dir.path())
            .demo(true)
            .session_timeout(std::time::Duration::from_millis(300))
            .slave_ip("127.0.0.2".parse().unwrap());
        let sim = Simulator::start(cfg).unwrap();
        let s = sim.login().unwrap();
        sim.call("VM.get_all", vec![Value::s(&s)]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(450));
        let e = sim.call("VM.get_all", vec![Value::s(&s)]).unwrap_err();
        assert_eq!(code(e), ("SESSION_INVALID".into(), vec![s.clone()]));
        let s2 = sim.login().unwrap();
        sim.expire_sessions(Some(&s2));
        assert_eq!(sim.call("pool.get_all", vec![Value::s(&s2)]).unwrap_err().code(), Some("SESSION_INVALID"));
        // The supporter names the coordinator's address.
        let slave: std::net::SocketAddr =
            sim.slave_url().unwrap().trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
        let r = jsonrpc(
            slave,
            serde_json::json!({"method": "session.login_with_password", "params": ["root", "alike"], "id": 1}),
        );
        assert_eq!(r["error"], serde_json::json!(["HOST_IS_SLAVE", "127.0.0.1"]));
        assert!(sim.lookup(Class::Vm, "db-01").is_some());
    }

    #[test]
    fn async_snapshot_gives_a_task_with_an_xmlrpc_result() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let task = sim.call("Async.VM.snapshot", vec![Value::s(&s), Value::s(web(&sim)), Value::s("nightly")]).unwrap();
        let task = task.as_str().unwrap().to_owned();
        let mut status = String::new();
        for _ in 0..100 {
            status =
                sim.call("task.get_status", vec![Value::s(&s), Value::s(&task)]).unwrap().as_str().unwrap().to_owned();
            if status != "pending" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(status, "success");
        let result = sim.call("task.get_result", vec![Value::s(&s), Value::s(&task)]).unwrap();
        let snap = alike_xen_sim::parse_value(result.as_str().unwrap()).unwrap();
        let snap = snap.as_str().unwrap();
        assert_eq!(sim.field(Class::Vm, snap, "is_a_snapshot"), Some(Value::Bool(true)));
        assert_eq!(sim.field(Class::Vm, snap, "snapshot_of"), Some(Value::s(web(&sim))));
        sim.call("task.destroy", vec![Value::s(&s), Value::s(&task)]).unwrap();
        assert_eq!(
            sim.call("task.get_status", vec![Value::s(&s), Value::s(&task)]).unwrap_err().code(),
            Some("HANDLE_INVALID")
        );
        // Failures land in error_info.
        sim.faults().fail_next("VM.snapshot", "SR_FULL", &["1", "2"]);
        let t = sim.call("Async.VM.snapshot", vec![Value::s(&s), Value::s(web(&sim)), Value::s("x")]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(
            sim.call("task.get_error_info", vec![Value::s(&s), t]).unwrap(),
            Value::strings(["SR_FULL", "1", "2"])
        );
        assert_eq!(
            sim.call("Async.VDI.get_nbd_info", vec![Value::s(&s), Value::s("x")]).unwrap_err().code(),
            Some("MESSAGE_METHOD_UNKNOWN")
        );
    }

    #[test]
    fn event_from_reports_task_and_vm_changes() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let classes = Value::strings(["task", "vm"]);
        let first =
            sim.call("event.from", vec![Value::s(&s), classes.clone(), Value::s(""), Value::Float(0.0)]).unwrap();
        let first = first.as_struct().unwrap();
        let n = first["events"].as_array().unwrap().len();
        assert_eq!(n, 4, "every VM as an add (dom0, template, two VMs)");
        let token = first["token"].clone();
        // Nothing yet: an empty answer after the timeout.
        let t = std::time::Instant::now();
        let none =
            sim.call("event.from", vec![Value::s(&s), classes.clone(), token.clone(), Value::Float(0.2)]).unwrap();
        assert!(none.as_struct().unwrap()["events"].as_array().unwrap().is_empty());
        assert!(t.elapsed() >= std::time::Duration::from_millis(200));
        let task = sim.call("Async.VM.snapshot", vec![Value::s(&s), Value::s(web(&sim)), Value::s("ev")]).unwrap();
        let mut seen = Vec::new();
        let mut token = token;
        for _ in 0..20 {
            let r =
                sim.call("event.from", vec![Value::s(&s), classes.clone(), token.clone(), Value::Float(1.0)]).unwrap();
            let r = r.as_struct().unwrap();
            token = r["token"].clone();
            for e in r["events"].as_array().unwrap() {
                let e = e.as_struct().unwrap();
                let status = e["snapshot"]
                    .as_struct()
                    .and_then(|m| m.get("status"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                seen.push((
                    e["class"].as_str().unwrap().to_owned(),
                    e["operation"].as_str().unwrap().to_owned(),
                    e["ref"].as_str().unwrap().to_owned(),
                    status,
                ));
            }
            if seen.iter().any(|(c, _, r, st)| c == "task" && r == task.as_str().unwrap() && st == "success") {
                break;
            }
        }
        assert!(seen.iter().any(|(c, op, r, _)| c == "task" && op == "add" && r == task.as_str().unwrap()), "{seen:?}");
        assert!(
            seen.iter().any(|(c, _, r, st)| c == "task" && r == task.as_str().unwrap() && st == "success"),
            "{seen:?}"
        );
        assert!(seen.iter().any(|(c, op, _, _)| c == "vm" && op == "add"), "the snapshot VM: {seen:?}");
    }

    #[test]
    fn restore_creation_calls() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let sr = sim.lookup(Class::Sr, "Local storage").unwrap();
        let net = sim.lookup(Class::Network, "Pool-wide network associated with eth0").unwrap();
        let rec =
            |pairs: &[(&str, Value)]| Value::Struct(pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect());
        let vm = sim
            .call(
                "VM.create",
                vec![
                    Value::s(&s),
                    rec(&[
                        ("name_label", Value::s("restored")),
                        ("memory_static_max", Value::s("1073741824")),
                        ("memory_dynamic_max", Value::Int(1 << 30)),
                        ("memory_dynamic_min", Value::Int(1 << 30)),
                        ("memory_static_min", Value::Int(256 << 20)),
                        ("VCPUs_max", Value::s("2")),
                        ("VCPUs_at_startup", Value::Int(2)),
                        ("platform", Value::string_map([("acpi", "1")])),
                        ("HVM_boot_policy", Value::s("BIOS order")),
                    ]),
                ],
            )
            .unwrap();
        let vm = vm.as_str().unwrap().to_owned();
        assert_eq!(sim.field(Class::Vm, &vm, "memory_static_max"), Some(Value::Int(1 << 30)));
        assert_eq!(sim.field(Class::Vm, &vm, "power_state"), Some(Value::s("Halted")));
        let vdi = sim
            .call(
                "VDI.create",
                vec![
                    Value::s(&s),
                    rec(&[
                        ("name_label", Value::s("restored disk")),
                        ("SR", Value::s(&sr)),
                        ("virtual_size", Value::s("5000000")),
                        ("type", Value::s("user")),
                        ("sharable", Value::Bool(false)),
                        ("read_only", Value::Bool(false)),
                        ("other_config", Value::map()),
                    ]),
                ],
            )
            .unwrap();
        // sm rounds VHD sizes up to 2 MiB.
        assert_eq!(sim.field(Class::Vdi, vdi.as_str().unwrap(), "virtual_size"), Some(Value::Int(6 << 20)));
        let vbd = rec(&[
            ("VM", Value::s(&vm)),
            ("VDI", vdi.clone()),
            ("userdevice", Value::s("0")),
            ("bootable", Value::Bool(true)),
            ("mode", Value::s("RW")),
            ("type", Value::s("Disk")),
            ("empty", Value::Bool(false)),
        ]);
        sim.call("VBD.create", vec![Value::s(&s), vbd.clone()]).unwrap();
        assert_eq!(sim.call("VBD.create", vec![Value::s(&s), vbd]).unwrap_err().code(), Some("DEVICE_ALREADY_EXISTS"));
        let vif = rec(&[
            ("VM", Value::s(&vm)),
            ("network", Value::s(&net)),
            ("device", Value::s("0")),
            ("MAC", Value::s("")),
            ("MTU", Value::s("1500")),
        ]);
        let vif = sim.call("VIF.create", vec![Value::s(&s), vif]).unwrap();
        let mac = sim.field(Class::Vif, vif.as_str().unwrap(), "MAC").unwrap();
        assert_eq!(mac.as_str().unwrap().len(), 17);
        let bad = rec(&[("name_label", Value::s("x"))]);
        assert_eq!(sim.call("VM.create", vec![Value::s(&s), bad]).unwrap_err().code(), Some("FIELD_TYPE_ERROR"));
        // Running VMs cannot be destroyed.
        let e = sim.call("VM.destroy", vec![Value::s(&s), Value::s(web(&sim))]).unwrap_err();
        assert_eq!(code(e), ("VM_BAD_POWER_STATE".into(), vec![web(&sim), "halted".into(), "running".into()]));
        sim.call("VM.destroy", vec![Value::s(&s), Value::s(&vm)]).unwrap();
    }
}

mod cbt {
    use super::common::*;
    use alike_xen_sim::{CBT_BLOCK, Class, Value};
    use base64::Engine as _;

    fn lcb(sim: &alike_xen_sim::Simulator, s: &str, a: &str, b: &str) -> Result<Vec<u64>, (String, Vec<String>)> {
        sim.call("VDI.list_changed_blocks", vec![Value::s(s), Value::s(a), Value::s(b)])
            .map(|v| bits(&base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()))
            .map_err(code)
    }

    fn snap_disks(sim: &alike_xen_sim::Simulator, s: &str, name: &str) -> (String, Vec<String>) {
        let snap = sim.call("VM.snapshot", vec![Value::s(s), Value::s(web(sim)), Value::s(name)]).unwrap();
        let snap = snap.as_str().unwrap().to_owned();
        let d = disks(sim, s, &snap);
        (snap, d)
    }

    #[test]
    fn changed_blocks_between_snapshots() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let leaf = disks(&sim, &s, &web(&sim));
        for v in &leaf {
            sim.call("VDI.enable_cbt", vec![Value::s(&s), Value::s(v)]).unwrap();
            assert_eq!(sim.field(Class::Vdi, v, "cbt_enabled"), Some(Value::Bool(true)));
        }
        let (snap1, d1) = snap_disks(&sim, &s, "s1");
        assert_eq!(sim.field(Class::Vdi, &d1[0], "cbt_enabled"), Some(Value::Bool(true)));
        assert_eq!(sim.field(Class::Vdi, &d1[0], "is_a_snapshot"), Some(Value::Bool(true)));
        sim.guest_write(&leaf[0], 5 * CBT_BLOCK + 100, &[7; 10]).unwrap();
        sim.guest_write(&leaf[0], 100 * CBT_BLOCK - 5, &[7; 10]).unwrap();
        sim.guest_write(&leaf[1], 0, &[1; 3]).unwrap();
        let (_snap2, d2) = snap_disks(&sim, &s, "s2");
        assert_eq!(lcb(&sim, &s, &d1[0], &d2[0]).unwrap(), vec![5, 99, 100]);
        assert_eq!(lcb(&sim, &s, &d1[1], &d2[1]).unwrap(), vec![0]);
        // Bitmap length covers the disk: 64 MiB / 64 KiB = 1024 bits.
        let raw = sim.call("VDI.list_changed_blocks", vec![Value::s(&s), Value::s(&d1[0]), Value::s(&d2[0])]).unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(raw.as_str().unwrap()).unwrap().len(), 128);
        // The running VM's disk is refused as vdi_to.
        let e = lcb(&sim, &s, &d2[0], &leaf[0]).unwrap_err();
        assert_eq!(e, ("VDI_IN_USE".into(), vec![leaf[0].clone(), "list_changed_blocks".into()]));
        // Same VDI twice and unrelated chains come from SM.
        assert_eq!(lcb(&sim, &s, &d1[0], &d1[0]).unwrap_err().0, "SR_BACKEND_FAILURE_460");
        assert_eq!(lcb(&sim, &s, &d1[0], &d2[1]).unwrap_err().0, "SR_BACKEND_FAILURE_460");
        assert_eq!(
            lcb(&sim, &s, &d1[0], "OpaqueRef:x").unwrap_err(),
            ("HANDLE_INVALID".into(), vec!["VDI".into(), "OpaqueRef:x".into()])
        );
        // data_destroy waits for the snapshot's VBDs, then keeps only CBT metadata.
        let e = sim.call("VDI.data_destroy", vec![Value::s(&s), Value::s(&d1[0])]).unwrap_err();
        assert_eq!(code(e), ("VDI_IN_USE".into(), vec![d1[0].clone(), "data_destroy".into()]));
        sim.call("VM.destroy", vec![Value::s(&s), Value::s(&snap1)]).unwrap();
        sim.call("VDI.data_destroy", vec![Value::s(&s), Value::s(&d1[0])]).unwrap();
        sim.call("VDI.data_destroy", vec![Value::s(&s), Value::s(&d1[0])]).unwrap();
        assert_eq!(sim.field(Class::Vdi, &d1[0], "type"), Some(Value::s("cbt_metadata")));
        assert_eq!(lcb(&sim, &s, &d1[0], &d2[0]).unwrap(), vec![5, 99, 100]);
        let e = sim.call("VDI.get_nbd_info", vec![Value::s(&s), Value::s(&d1[0])]).unwrap_err();
        assert_eq!(code(e), ("VDI_INCOMPATIBLE_TYPE".into(), vec![d1[0].clone(), "cbt_metadata".into()]));
        assert!(sim.read_vdi(&d1[0], 0, 512).is_err());
        // data_destroy of a non-snapshot, CBT on a snapshot.
        let e = sim.call("VDI.data_destroy", vec![Value::s(&s), Value::s(&leaf[0])]).unwrap_err();
        assert_eq!(code(e).0, "OPERATION_NOT_ALLOWED");
        let e = sim.call("VDI.disable_cbt", vec![Value::s(&s), Value::s(&d2[0])]).unwrap_err();
        assert_eq!(code(e), ("OPERATION_NOT_ALLOWED".into(), vec![format!("VDI is a snapshot: {}", d2[0])]));
    }

    #[test]
    fn quiesce_and_checkpoint() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let web = web(&sim);
        let e = sim.call("VM.snapshot_with_quiesce", vec![Value::s(&s), Value::s(&web), Value::s("q")]).unwrap_err();
        assert_eq!(code(e), ("VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED".into(), vec![web.clone()]));
        let db = sim.lookup(alike_xen_sim::Class::Vm, "db-01").unwrap();
        let e = sim.call("VM.snapshot_with_quiesce", vec![Value::s(&s), Value::s(&db), Value::s("q")]).unwrap_err();
        assert_eq!(code(e).0, "VM_BAD_POWER_STATE");
        sim.set_quiesce_support(&web, true);
        let q = sim.call("VM.snapshot_with_quiesce", vec![Value::s(&s), Value::s(&web), Value::s("q")]).unwrap();
        assert_eq!(sim.field(Class::Vm, q.as_str().unwrap(), "is_a_snapshot"), Some(Value::Bool(true)));
        // A checkpoint's VBDs stay "attached", yet list_changed_blocks is allowed on them.
        let leaf = disks(&sim, &s, &web)[0].clone();
        sim.call("VDI.enable_cbt", vec![Value::s(&s), Value::s(&leaf)]).unwrap();
        let (_, d1) = snap_disks(&sim, &s, "s1");
        let c = sim.call("VM.checkpoint", vec![Value::s(&s), Value::s(&web), Value::s("c")]).unwrap();
        assert_eq!(sim.field(Class::Vm, c.as_str().unwrap(), "power_state"), Some(Value::s("Suspended")));
        let d2 = disks(&sim, &s, c.as_str().unwrap());
        assert_eq!(lcb(&sim, &s, &d1[0], &d2[0]).unwrap(), Vec::<u64>::new());
        let free = sim.call("VM.get_allowed_VBD_devices", vec![Value::s(&s), Value::s(&web)]).unwrap();
        assert_eq!(free.as_array().unwrap()[..2], [Value::s("2"), Value::s("4")]);
    }

    #[test]
    fn state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let start = || alike_xen_sim::Simulator::start(alike_xen_sim::SimConfig::new(dir.path()).demo(true)).unwrap();
        let sim = start();
        let s = sim.login().unwrap();
        let leaf = disks(&sim, &s, &web(&sim))[0].clone();
        sim.call("VDI.enable_cbt", vec![Value::s(&s), Value::s(&leaf)]).unwrap();
        let (_, d1) = snap_disks(&sim, &s, "s1");
        sim.guest_write(&leaf, 9 * CBT_BLOCK, b"persisted").unwrap();
        let cert = sim.cert_pem().to_owned();
        drop(sim);
        let sim = start();
        assert_eq!(sim.cert_pem(), cert, "same host certificate");
        let s = sim.login().unwrap();
        assert_eq!(sim.read_vdi(&leaf, 9 * CBT_BLOCK, 9).unwrap(), b"persisted");
        let (_, d2) = snap_disks(&sim, &s, "s2");
        assert_eq!(lcb(&sim, &s, &d1[0], &d2[0]).unwrap(), vec![9]);
        assert_eq!(
            sim.call("VM.get_by_name_label", vec![Value::s(&s), Value::s("web-01")]).unwrap().as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn a_broken_chain_is_reported() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let leaf = disks(&sim, &s, &web(&sim));
        sim.call("VDI.enable_cbt", vec![Value::s(&s), Value::s(&leaf[0])]).unwrap();
        let (_, d1) = snap_disks(&sim, &s, "s1");
        sim.call("VDI.disable_cbt", vec![Value::s(&s), Value::s(&leaf[0])]).unwrap();
        sim.call("VDI.enable_cbt", vec![Value::s(&s), Value::s(&leaf[0])]).unwrap();
        let (_, d2) = snap_disks(&sim, &s, "s2");
        let (c, p) = lcb(&sim, &s, &d1[0], &d2[0]).unwrap_err();
        assert_eq!(c, "SR_BACKEND_FAILURE_460");
        assert!(p[1].contains("unrelated"), "{p:?}");
        // Without CBT on the snapshot side too.
        assert_eq!(lcb(&sim, &s, &d1[1], &d2[1]).unwrap_err().0, "SR_BACKEND_FAILURE_460");
        // A resize keeps the chain (sm grows the log) but the bitmap grows.
        sim.set_power_state(&web(&sim), "Halted").unwrap();
        sim.call("VDI.resize", vec![Value::s(&s), Value::s(&leaf[0]), Value::Int(128 << 20)]).unwrap();
        sim.guest_write(&leaf[0], 127 << 20, &[1; 4]).unwrap();
        let (_, d3) = snap_disks(&sim, &s, "s3");
        let b = lcb(&sim, &s, &d2[0], &d3[0]).unwrap();
        assert_eq!(b, vec![(127 << 20) / CBT_BLOCK]);
        let e = sim.call("VDI.resize", vec![Value::s(&s), Value::s(&leaf[0]), Value::Int(1 << 20)]).unwrap_err();
        assert_eq!(code(e).0, "SR_BACKEND_FAILURE_79");
    }
}

mod transfer {
    use super::common::*;
    use alike_core::DiskSource as _;
    use alike_xen_sim::{Class, Value};
    use std::process::Command;

    fn snapshot_disk(sim: &alike_xen_sim::Simulator, s: &str, name: &str, n: usize) -> String {
        let snap = sim.call("VM.snapshot", vec![Value::s(s), Value::s(web(sim)), Value::s(name)]).unwrap();
        disks(sim, s, snap.as_str().unwrap())[n].clone()
    }

    fn uuid(sim: &alike_xen_sim::Simulator, vdi: &str) -> String {
        sim.field(Class::Vdi, vdi, "uuid").unwrap().as_str().unwrap().to_owned()
    }

    #[test]
    fn raw_and_vhd_exports_match_the_disk() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let snap = snapshot_disk(&sim, &s, "full", 1);
        let size = 32usize << 20;
        let want = sim.read_vdi(&snap, 0, size).unwrap();
        assert!(want.iter().any(|&b| b != 0), "demo disk holds data");
        let (status, head, body) =
            http(sim.addr(), "GET", &format!("/export_raw_vdi?session_id={s}&vdi={snap}&format=raw"), &[], b"");
        assert_eq!(status, 200);
        assert!(head.to_ascii_lowercase().contains("application/octet-stream"));
        assert!(body == want, "raw export differs");
        // VHD by uuid, with a trailing slash as Xen Orchestra sends it (qemu-img
        // checks VHD exports in `vhd_exports_pass_qemu_img`).
        let u = uuid(&sim, &snap);
        let (status, _, vhd) =
            http(sim.addr(), "GET", &format!("/export_raw_vdi/?session_id={s}&vdi={u}&format=vhd"), &[], b"");
        assert_eq!(status, 200);
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("full.vhd");
        std::fs::write(&img, &vhd).unwrap();
        let ours = alike_formats::vhd::VhdSource::open(&img).unwrap();
        let mut got = vec![0u8; size];
        ours.read_at(0, &mut got).unwrap();
        assert!(got == want, "VHD export differs (our reader)");
        // Basic auth works too; a bad session is 401.
        let (status, _, _) =
            http(sim.addr(), "GET", &format!("/export_raw_vdi?session_id=OpaqueRef:bad&vdi={snap}"), &[], b"");
        assert_eq!(status, 401);
        let (status, _, body) = http(
            sim.addr(),
            "GET",
            &format!("/export_raw_vdi?vdi={snap}&format=raw"),
            &[("Authorization", "Basic cm9vdDphbGlrZQ==")],
            b"",
        );
        assert_eq!((status, body.len()), (200, size));
        let (status, _, _) =
            http(sim.addr(), "GET", &format!("/export_raw_vdi?session_id={s}&vdi={snap}&format=qcow3"), &[], b"");
        assert_eq!(status, 404);
    }

    #[test]
    fn delta_vhd_holds_only_changed_blocks() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let leaf = disks(&sim, &s, &web(&sim))[0].clone();
        let base = snapshot_disk(&sim, &s, "base", 0);
        sim.guest_write(&leaf, (10 << 20) + 3, b"changed!").unwrap();
        sim.guest_write(&leaf, 40 << 20, &[0xAB; 70_000]).unwrap();
        let next = snapshot_disk(&sim, &s, "next", 0);
        let dir = tempfile::tempdir().unwrap();
        let bu = uuid(&sim, &base);
        let (_, _, full) =
            http(sim.addr(), "GET", &format!("/export_raw_vdi?session_id={s}&vdi={bu}&format=vhd"), &[], b"");
        std::fs::write(dir.path().join(format!("{bu}.vhd")), full).unwrap();
        let (status, _, delta) = http(
            sim.addr(),
            "GET",
            &format!("/export_raw_vdi?session_id={s}&vdi={next}&format=vhd&base={base}"),
            &[],
            b"",
        );
        assert_eq!(status, 200);
        // Only the two touched 2 MiB blocks, every sector present.
        let mut stream = alike_formats::vhd::StreamReader::new(&delta[..]).unwrap();
        assert_eq!(stream.disk_type(), alike_formats::vhd::DiskType::Differencing);
        let mut covered = 0u64;
        let mut starts = Vec::new();
        while let Some(e) = stream.next_extent().unwrap() {
            covered += e.data.len() as u64;
            starts.push(e.offset >> 21);
        }
        starts.dedup();
        assert_eq!((starts, covered), (vec![5, 20], 2 * (2 << 20)));
        // The delta over the full export reads as the new snapshot.
        let child = dir.path().join("delta.vhd");
        std::fs::write(&child, &delta).unwrap();
        let chain = alike_formats::vhd::VhdSource::open(&child).unwrap();
        let mut got = vec![0u8; 64 << 20];
        chain.read_at(0, &mut got).unwrap();
        assert!(got == sim.read_vdi(&next, 0, 64 << 20).unwrap(), "delta chain differs");
    }

    fn qemu_img(args: &[&str], files: &[&std::path::Path]) -> Vec<u8> {
        let out = Command::new("qemu-img").args(args).args(files).output().expect("qemu-img runs");
        assert!(
            out.status.success(),
            "qemu-img {args:?} {files:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The simulator's VHD exports come from alike-formats' writer, the
    /// writer the adapter's reader is tested against: a mistake shared by
    /// both would pass every other test. So qemu-img (the oracle; it has no
    /// `check` for VHD) must size them right and read them as the disk —
    /// the full export against the raw one, the `base=` delta (which qemu
    /// reads without its parent) as the changed blocks over zeroes. Under
    /// `CI` a missing qemu-img fails the test.
    #[test]
    fn vhd_exports_pass_qemu_img() {
        if !alike_testing::require_tool("qemu-img") {
            return;
        }
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let leaf = disks(&sim, &s, &web(&sim))[0].clone();
        let base = snapshot_disk(&sim, &s, "base", 0);
        sim.guest_write(&leaf, (10 << 20) + 3, b"changed!").unwrap();
        sim.guest_write(&leaf, (40 << 20) - 5000, &[0xAB; 70_000]).unwrap();
        let next = snapshot_disk(&sim, &s, "next", 0);
        let dir = tempfile::tempdir().unwrap();
        let get = |query: &str, file: &str| {
            let (status, _, body) =
                http(sim.addr(), "GET", &format!("/export_raw_vdi?session_id={s}&{query}"), &[], b"");
            assert_eq!(status, 200, "{query}");
            let path = dir.path().join(file);
            std::fs::write(&path, body).unwrap();
            path
        };
        let raw = get(&format!("vdi={next}&format=raw"), "next.raw");
        let size = std::fs::metadata(&raw).unwrap().len();
        let full = get(&format!("vdi={next}&format=vhd"), "next.vhd");
        let delta = get(&format!("vdi={next}&format=vhd&base={base}"), "delta.vhd");
        for (vhd, kind) in [(&full, "full"), (&delta, "delta")] {
            let info = qemu_img(&["info", "-f", "vpc", "--output=json"], &[vhd]);
            let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
            assert_eq!(info["virtual-size"], serde_json::json!(size), "{kind} export: {info}");
        }
        // The full export reads as the raw one.
        qemu_img(&["compare", "-f", "vpc", "-F", "raw"], &[&full, &raw]);
        // The delta reads (alone) as the blocks that changed, zeroes elsewhere.
        let got = dir.path().join("delta.raw");
        qemu_img(&["convert", "-f", "vpc", "-O", "raw"], &[&delta, &got]);
        let got = std::fs::read(&got).unwrap();
        let want = std::fs::read(&raw).unwrap();
        assert_eq!(got.len(), want.len());
        let block = 2usize << 20;
        for (i, (g, w)) in got.chunks(block).zip(want.chunks(block)).enumerate() {
            if [5, 19, 20].contains(&i) {
                assert!(g == w, "delta block {i} differs from the disk");
            } else {
                assert!(g.iter().all(|&b| b == 0), "delta block {i} holds data");
            }
        }
    }

    #[test]
    fn imports_raw_framed_and_vhd() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let target = disks(&sim, &s, &sim.lookup(Class::Vm, "db-01").unwrap())[0].clone();
        let size = 48usize << 20;
        let mut data = vec![0u8; size];
        for (i, b) in data.iter_mut().enumerate().skip(1 << 20).take(3 << 20) {
            *b = (i * 7 % 251) as u8;
        }
        // Raw, announcing more than is sent and closing (Xen Orchestra's trick).
        let task = sim.call("task.create", vec![Value::s(&s), Value::s("import"), Value::s("")]).unwrap();
        let t = task.as_str().unwrap();
        let (status, head, _) = http(
            sim.addr(),
            "PUT",
            &format!("/import_raw_vdi?session_id={s}&vdi={target}&format=raw&task_id={t}"),
            &[("Content-Length", "1125899906842624")],
            &data,
        );
        assert_eq!(status, 200);
        assert!(head.contains(t));
        assert!(sim.read_vdi(&target, 0, size).unwrap() == data);
        assert_eq!(sim.call("task.get_status", vec![Value::s(&s), task.clone()]).unwrap(), Value::s("success"));
        // Without vdi, a raw import creates "Imported VDI" in the SR; the task names it.
        let sr = sim.lookup(Class::Sr, "Local storage").unwrap();
        let task = sim.call("task.create", vec![Value::s(&s), Value::s("new"), Value::s("")]).unwrap();
        let t = task.as_str().unwrap();
        let small = vec![9u8; 3 << 20];
        let (status, _, _) =
            http(sim.addr(), "PUT", &format!("/import_raw_vdi?session_id={s}&sr_id={sr}&task_id={t}"), &[], &small);
        assert_eq!(status, 200);
        let result = sim.call("task.get_result", vec![Value::s(&s), task.clone()]).unwrap();
        let new = alike_xen_sim::parse_value(result.as_str().unwrap()).unwrap();
        let new = new.as_str().unwrap();
        assert_eq!(sim.field(Class::Vdi, new, "name_label"), Some(Value::s("Imported VDI")));
        assert!(sim.read_vdi(new, 0, 3 << 20).unwrap() == small);
        // HTTP chunked encoding is refused.
        let (status, _, _) = http(
            sim.addr(),
            "PUT",
            &format!("/import_raw_vdi?session_id={s}&vdi={target}&format=raw"),
            &[("Transfer-Encoding", "chunked")],
            b"5\r\nhello\r\n0\r\n\r\n",
        );
        assert_eq!(status, 404);
        // XAPI's own framing: (u64 offset, u32 length) records, zero record ends.
        let mut framed = Vec::new();
        for (off, bytes) in [(7u64 << 20, &b"framed one"[..]), (9 << 20, b"framed two")] {
            framed.extend_from_slice(&off.to_le_bytes());
            framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            framed.extend_from_slice(bytes);
        }
        framed.extend_from_slice(&[0; 12]);
        let (status, _, _) = http(
            sim.addr(),
            "PUT",
            &format!("/import_raw_vdi?session_id={s}&vdi={target}&format=raw&chunked"),
            &[],
            &framed,
        );
        assert_eq!(status, 200);
        assert_eq!(sim.read_vdi(&target, 9 << 20, 10).unwrap(), b"framed two");
        // A VHD made by our writer replaces the content.
        let mut other = vec![0u8; size];
        other[(20 << 20)..(20 << 20) + 5000].fill(0x5A);
        let src = alike_core::MemSource { label: "v".into(), data: other.clone() };
        let mut vhd = Vec::new();
        alike_formats::vhd::write_stream(&src, &mut vhd, &alike_formats::vhd::VhdOptions::default()).unwrap();
        let (status, _, _) =
            http(sim.addr(), "PUT", &format!("/import_raw_vdi?session_id={s}&vdi={target}&format=vhd"), &[], &vhd);
        assert_eq!(status, 200);
        assert!(sim.read_vdi(&target, 0, size).unwrap() == other, "VHD import differs");
    }

    #[test]
    fn a_dropped_export_and_an_injected_failure() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let snap = snapshot_disk(&sim, &s, "x", 1);
        sim.faults().drop_next_export_after(1_000_000);
        let (status, _, body) =
            http(sim.addr(), "GET", &format!("/export_raw_vdi?session_id={s}&vdi={snap}"), &[], b"");
        assert_eq!((status, body.len()), (200, 1_000_000));
        let (_, _, body) = http(sim.addr(), "GET", &format!("/export_raw_vdi?session_id={s}&vdi={snap}"), &[], b"");
        assert_eq!(body.len(), 32 << 20);
        sim.faults().fail_next("VDI.get_virtual_size", "VDI_IO_ERROR", &["Device I/O errors"]);
        let e = sim.call("VDI.get_virtual_size", vec![Value::s(&s), Value::s(&snap)]).unwrap_err();
        assert_eq!(code(e), ("VDI_IO_ERROR".into(), vec!["Device I/O errors".into()]));
        sim.call("VDI.get_virtual_size", vec![Value::s(&s), Value::s(&snap)]).unwrap();
        // The same over the /sim/ HTTP test API.
        let (status, _, _) =
            http(sim.addr(), "POST", "/sim/fail_next?method=VM.get_all&code=INTERNAL_ERROR&params=boom", &[], b"");
        assert_eq!(status, 200);
        assert_eq!(sim.call("VM.get_all", vec![Value::s(&s)]).unwrap_err().code(), Some("INTERNAL_ERROR"));
        let leaf = disks(&sim, &s, &web(&sim))[1].clone();
        let (status, _, _) = http(sim.addr(), "PUT", &format!("/sim/write?vdi={leaf}&offset=4096"), &[], b"guest data");
        assert_eq!(status, 200);
        assert_eq!(sim.read_vdi(&leaf, 4096, 10).unwrap(), b"guest data");
    }
}

mod nbd {
    use super::common::*;
    use alike_xen_sim::Value;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::process::Command;

    /// qemu-img convert from the simulator's NBD export. qemu probes with
    /// `NBD_OPT_GO` and, refused, with `NBD_OPT_LIST`, which xapi-nbd denies
    /// (`ERR_POLICY`) and qemu takes as fatal: so qemu needs the simulator's
    /// `nbd_go` extension. With `tls`, peer verification is off because qemu
    /// insists that the trusted certificate is a CA, and XAPI's host
    /// certificate is self-signed and not one (the rustls client in
    /// `xapi_nbd_behaviour_with_an_xo_style_client` verifies it).
    fn qemu_read(info: &serde_json::Value, tls: bool, out: &std::path::Path) -> std::process::Output {
        let export = info["exportname"].as_str().unwrap().replace(',', ",,");
        let mut opts = format!(
            "driver=nbd,server.type=inet,server.host={},server.port={},export={export}",
            info["address"].as_str().unwrap(),
            info["port"]
        );
        let mut cmd = Command::new("qemu-img");
        cmd.arg("convert");
        let dir = tempfile::tempdir().unwrap();
        if tls {
            // qemu loads and sanity-checks ca-cert.pem even when it does not
            // verify: give it an unrelated CA.
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
            std::fs::write(dir.path().join("ca-cert.pem"), p.self_signed(&key).unwrap().pem()).unwrap();
            cmd.arg("--object")
                .arg(format!("tls-creds-x509,id=tls0,dir={},endpoint=client,verify-peer=off", dir.path().display()));
            opts.push_str(",tls-creds=tls0");
        }
        cmd.args(["--image-opts", &opts, "-O", "raw"]).arg(out).output().unwrap()
    }

    fn nbd_info(sim: &alike_xen_sim::Simulator, s: &str, vdi: &str) -> serde_json::Value {
        let v = sim.call("VDI.get_nbd_info", vec![Value::s(s), Value::s(vdi)]).unwrap();
        let first = v.as_array().unwrap().first().cloned().expect("an NBD record");
        first.to_json()
    }

    fn snapshot_disk(sim: &alike_xen_sim::Simulator, s: &str, n: usize) -> String {
        let snap = sim.call("VM.snapshot", vec![Value::s(s), Value::s(web(sim)), Value::s("n")]).unwrap();
        disks(sim, s, snap.as_str().unwrap())[n].clone()
    }

    #[test]
    fn qemu_reads_the_export_plain_and_over_tls() {
        if !alike_testing::require_tool("qemu-img") {
            return;
        }
        for tls in [false, true] {
            let (sim, _d) = sim_with(|c| c.tls(tls).nbd_go(true));
            let s = sim.login().unwrap();
            let vdi = snapshot_disk(&sim, &s, 1);
            let info = nbd_info(&sim, &s, &vdi);
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("o.raw");
            let r = qemu_read(&info, tls, &out);
            assert!(r.status.success(), "tls={tls}: {}", String::from_utf8_lossy(&r.stderr));
            assert!(
                std::fs::read(&out).unwrap() == sim.read_vdi(&vdi, 0, 32 << 20).unwrap(),
                "NBD read differs (tls={tls})"
            );
            // A forced-TLS server refuses a plaintext client; an expired session's name is refused.
            if tls {
                assert!(!qemu_read(&info, false, &dir.path().join("p.raw")).status.success());
            }
            sim.expire_sessions(Some(&s));
            assert!(!qemu_read(&info, tls, &dir.path().join("q.raw")).status.success());
        }
    }

    trait Stream: Read + Write {}
    impl<T: Read + Write> Stream for T {}

    fn opt(w: &mut dyn Stream, opt: u32, data: &[u8]) {
        let mut v = Vec::new();
        v.extend_from_slice(b"IHAVEOPT");
        v.extend_from_slice(&opt.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        w.write_all(&v).unwrap();
    }

    /// Reads an option reply; returns its type.
    fn reply(r: &mut dyn Stream) -> u32 {
        let mut h = [0u8; 20];
        r.read_exact(&mut h).unwrap();
        assert_eq!(&h[..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut skip = vec![0u8; len as usize];
        r.read_exact(&mut skip).unwrap();
        u32::from_be_bytes(h[12..16].try_into().unwrap())
    }

    fn greet(addr: std::net::SocketAddr) -> TcpStream {
        let mut t = TcpStream::connect(addr).unwrap();
        let mut g = [0u8; 18];
        t.read_exact(&mut g).unwrap();
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(&g[16..], &[0, 1], "FIXED_NEWSTYLE only, no NO_ZEROES");
        t.write_all(&1u32.to_be_bytes()).unwrap();
        t
    }

    /// Xen Orchestra's sequence against the faithful server: STARTTLS (the
    /// certificate from get_nbd_info verified by rustls, SNI = subject),
    /// EXPORT_NAME, 134 bytes, reads in flight, EPERM on write, DISC.
    fn xo_client(sim: &alike_xen_sim::Simulator, info: &serde_json::Value, tls: bool, vdi: &str) {
        let mut t = greet(sim.nbd_addr());
        let mut s: Box<dyn Stream> = if tls {
            opt(&mut t, 3, &[]);
            assert_eq!(reply(&mut t), 0x8000_0005, "LIST before TLS: TLS_REQD");
            opt(&mut t, 5, &[]);
            assert_eq!(reply(&mut t), 1, "STARTTLS: ACK");
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            roots
                .add(
                    rustls::pki_types::CertificateDer::from_pem_slice(info["cert"].as_str().unwrap().as_bytes())
                        .unwrap(),
                )
                .unwrap();
            let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(info["subject"].as_str().unwrap().to_owned()).unwrap();
            let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
            Box::new(rustls::StreamOwned::new(conn, t))
        } else {
            Box::new(t)
        };
        opt(&mut *s, 7, &[]);
        assert_eq!(reply(&mut *s), 0x8000_0001, "GO: UNSUP");
        opt(&mut *s, 3, &[]);
        assert_eq!(reply(&mut *s), 0x8000_0002, "LIST: POLICY");
        opt(&mut *s, 1, info["exportname"].as_str().unwrap().as_bytes());
        let mut e = [0u8; 134];
        s.read_exact(&mut e).unwrap();
        let size = u64::from_be_bytes(e[..8].try_into().unwrap());
        assert_eq!(size, 64 << 20);
        assert_eq!(&e[8..10], &[0, 3], "HAS_FLAGS|READ_ONLY");
        assert!(e[10..].iter().all(|&b| b == 0));
        let reads = [(0u64, 2u32 << 20), (5 << 20, 4096), (63 << 20, 1 << 20), (10 << 20, 65536)];
        let mut req = Vec::new();
        for (h, (off, len)) in reads.iter().enumerate() {
            req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
            req.extend_from_slice(&[0, 0, 0, 0]);
            req.extend_from_slice(&(h as u64).to_be_bytes());
            req.extend_from_slice(&off.to_be_bytes());
            req.extend_from_slice(&len.to_be_bytes());
        }
        // One unaligned read: EINVAL.
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&[0, 0, 0, 0]);
        req.extend_from_slice(&99u64.to_be_bytes());
        req.extend_from_slice(&3u64.to_be_bytes());
        req.extend_from_slice(&512u32.to_be_bytes());
        s.write_all(&req).unwrap();
        let mut seen = 0;
        while seen < reads.len() + 1 {
            let mut h = [0u8; 16];
            s.read_exact(&mut h).unwrap();
            assert_eq!(&h[..4], &0x6744_6698u32.to_be_bytes());
            let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
            let handle = u64::from_be_bytes(h[8..].try_into().unwrap());
            if handle == 99 {
                assert_eq!(err, 22);
            } else {
                assert_eq!(err, 0);
                let (off, len) = reads[handle as usize];
                let mut data = vec![0u8; len as usize];
                s.read_exact(&mut data).unwrap();
                assert!(data == sim.read_vdi(vdi, off, len as usize).unwrap(), "read {handle} differs");
            }
            seen += 1;
        }
        // WRITE: EPERM (payload consumed); then DISC.
        let mut w = Vec::new();
        w.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        w.extend_from_slice(&[0, 0, 0, 1]);
        w.extend_from_slice(&7u64.to_be_bytes());
        w.extend_from_slice(&0u64.to_be_bytes());
        w.extend_from_slice(&512u32.to_be_bytes());
        w.extend_from_slice(&[0u8; 512]);
        s.write_all(&w).unwrap();
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[4..8].try_into().unwrap()), 1);
        let mut d = [0u8; 28];
        d[..4].copy_from_slice(&0x2560_9513u32.to_be_bytes());
        d[7] = 2;
        s.write_all(&d).unwrap();
    }

    #[test]
    fn an_nbd_connection_cut_mid_read() {
        let (sim, _d) = sim();
        let s = sim.login().unwrap();
        let vdi = snapshot_disk(&sim, &s, 0);
        let info = nbd_info(&sim, &s, &vdi);
        sim.faults().drop_next_nbd_after(10_000);
        let mut t = greet(sim.nbd_addr());
        opt(&mut t, 1, info["exportname"].as_str().unwrap().as_bytes());
        let mut e = [0u8; 134];
        t.read_exact(&mut e).unwrap();
        let mut req = Vec::new();
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&[0, 0, 0, 0]);
        req.extend_from_slice(&1u64.to_be_bytes());
        req.extend_from_slice(&0u64.to_be_bytes());
        req.extend_from_slice(&65536u32.to_be_bytes());
        t.write_all(&req).unwrap();
        let mut got = Vec::new();
        let _ = t.read_to_end(&mut got);
        assert_eq!(got.len(), 16 + 10_000, "reply header and 10 000 bytes, then the cut");
    }

    #[test]
    fn xapi_nbd_behaviour_with_an_xo_style_client() {
        for tls in [false, true] {
            let (sim, _d) = sim_with(|c| c.tls(tls));
            let s = sim.login().unwrap();
            let vdi = snapshot_disk(&sim, &s, 0);
            let info = nbd_info(&sim, &s, &vdi);
            assert!(info["exportname"].as_str().unwrap().ends_with(&format!("?session_id={s}")));
            assert_eq!(info["subject"], "localhost");
            xo_client(&sim, &info, tls, &vdi);
            if tls {
                // EXPORT_NAME before STARTTLS drops the connection.
                let mut t = greet(sim.nbd_addr());
                opt(&mut t, 1, info["exportname"].as_str().unwrap().as_bytes());
                let mut b = [0u8; 1];
                assert_eq!(t.read(&mut b).unwrap_or(0), 0);
            }
        }
        // No network with an NBD purpose: no NBD info, connections refused.
        let (sim, _d) = sim_with(|c| c.nbd_purpose(""));
        let s = sim.login().unwrap();
        let vdi = snapshot_disk(&sim, &s, 0);
        assert_eq!(sim.call("VDI.get_nbd_info", vec![Value::s(&s), Value::s(&vdi)]).unwrap(), Value::Array(vec![]));
        let mut t = TcpStream::connect(sim.nbd_addr()).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(t.read(&mut b).unwrap_or(0), 0);
    }
}
