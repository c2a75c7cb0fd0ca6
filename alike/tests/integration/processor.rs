//! The processor (the worker side of the processor protocol) in process,
//! over in-memory pipes: what it answers to jobs it must refuse, and the
//! golden job lines as the facade's job kinds.

use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use alike::remote::{ProcessorEvent, ProcessorJob, WorkerExit, WorkerOptions, serve_processor};
use alike_remote::protocol::{OrchestratorMessage, decode_orchestrator, decode_worker, encode};
use serde_json::Value;

/// A reader fed line by line; it ends when the sender is dropped.
struct Pipe {
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            match self.rx.recv() {
                Ok(b) => self.pending = b,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs a processor that is sent `lines` (then its input ends, unless
/// `keep_open`); returns how it ended and what it wrote.
fn serve(lines: &[&str], keep_open: bool) -> (WorkerExit, Vec<ProcessorEvent>) {
    let (tx, rx): (Sender<Vec<u8>>, _) = channel();
    for l in lines {
        tx.send(format!("{l}\n").into_bytes()).unwrap();
    }
    let keep = keep_open.then_some(tx);
    let out = Sink::default();
    let exit =
        serve_processor(Box::new(Pipe { rx, pending: Vec::new() }), Box::new(out.clone()), &WorkerOptions::default());
    drop(keep);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let events = text.lines().map(|l| decode_worker(l.as_bytes()).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    (exit, events)
}

fn failure(events: &[ProcessorEvent]) -> alike::remote::Failure {
    match events.last() {
        Some(ProcessorEvent::Failed(f)) => f.error.clone(),
        other => panic!("expected failed, got {other:?}"),
    }
}

#[test]
fn a_processor_refuses_what_it_must_and_says_why() {
    // Another version: refused naming both, as unsupported_version.
    let (exit, ev) = serve(&[r#"{"type":"job","v":2,"id":"j","kind":"backup","params":{}}"#], true);
    assert_eq!(exit, WorkerExit::Failed);
    assert!(matches!(&ev[0], ProcessorEvent::Hello(h) if h.v == 1 && h.kinds == alike::remote::KINDS));
    let f = failure(&ev);
    assert_eq!(f.kind, "unsupported_version");
    assert!(f.message.contains("v2") && f.message.contains("v1"), "{}", f.message);

    let cases = [
        (
            r#"{"type":"job","v":1,"id":"j","kind":"vault","params":{}}"#,
            "does not run \"vault\" jobs (it runs: backup, restore, verify, replicate-sender, replicate-receiver, replicate-both, xen-vm-config)",
        ),
        (
            r#"{"type":"job","v":1,"id":"j","kind":"verify","params":{"store":{"location":"/x"},"bwlimit":1}}"#,
            "unknown field `bwlimit`",
        ),
        (r#"{"type":"job","v":1,"id":"j","kind":"verify","params":{}}"#, "missing field `store`"),
        (
            r#"{"type":"job","v":1,"id":"j","kind":"verify","params":{"store":{"location":"/x"}},"secrets":{"token":"t0p"}}"#,
            "takes no secret \"token\"",
        ),
        (r#"{"type":"cancel"}"#, "the first message must be the job"),
        (
            r#"{"type":"job","v":1,"id":"j","kind":"replicate-sender","params":{"version":1,"job_id":"j","vm":"v","role":"sender","peer":"h","secret":"00"}}"#,
            "the per-job secret travels in the secrets, as \"job_secret\"",
        ),
        (
            r#"{"type":"job","v":1,"id":"j","kind":"replicate-sender","params":{"version":1,"job_id":"j","vm":"v","role":"sender","peer":"h"}}"#,
            "the secret \"job_secret\" (64 hex digits) is missing",
        ),
        (
            r#"{"type":"job","v":1,"id":"j","kind":"replicate-sender","params":{"version":1,"job_id":"j","vm":"v","role":"receiver","listen":"h","replica":{"kind":"dir","path":"/r"}},"secrets":{"job_secret":"5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f"}}"#,
            "the job description's role is receiver",
        ),
        (
            r#"{"type":"job","v":1,"id":"j","kind":"replicate-receiver","params":{"version":1,"job_id":"j","vm":"v","role":"receiver","replica":{"kind":"dir","path":"/r"},"seed":{"store":{"location":"/s","password":"t0p"},"version":"latest"}},"secrets":{"job_secret":"5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f"}}"#,
            "store /s: a passphrase travels in the secrets, as \"password:/s\"",
        ),
        (
            r#"{"type":"job","v":1,"id":"j","kind":"replicate-receiver","params":{"version":1,"job_id":"j","vm":"v","role":"receiver","replica":{"kind":"dir","path":"/r"}},"secrets":{"job_secret":"5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f","password:/elsewhere":"t0p"}}"#,
            "takes no secret \"password:/elsewhere\"",
        ),
        (
            r#"{"type":"job","v":1,"id":"j","kind":"replicate-receiver","params":{"version":2,"job_id":"j"},"secrets":{"job_secret":"00"}}"#,
            "job description version 2: this build reads version 1",
        ),
        (
            r#"{"type":"job","v":1,"id":"j","kind":"xen-vm-config","params":{"pool":{"url":"https://p","password":"t0p"},"vm":"v"}}"#,
            "the XAPI password travels in the secrets, as \"xapi_password:https://p\"",
        ),
        (
            r#"{"type":"job","v":1,"id":"j","kind":"xen-vm-config","params":{"pool":{"url":"https://p"},"vm":"v"},"secrets":{"xapi_password:https://q":"t0p"}}"#,
            "takes no secret \"xapi_password:https://q\"",
        ),
        ("not json", "malformed message from the orchestrator"),
    ];
    for (line, want) in cases {
        let (exit, ev) = serve(&[line], true);
        assert_eq!(exit, WorkerExit::Failed, "{line}");
        let f = failure(&ev);
        assert!(f.message.contains(want), "{line}: {}", f.message);
        assert!(!f.message.contains("t0p"), "a secret in an error: {}", f.message);
    }

    // The input ends before a job: only hello was said.
    let (exit, ev) = serve(&[], false);
    assert_eq!(exit, WorkerExit::Cancelled);
    assert_eq!(ev.len(), 1);
}

#[test]
fn a_job_whose_input_ends_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    alike::Store::builder().no_encryption().cache_dir(dir.path().join("c")).create(&store).unwrap();
    let img = dir.path().join("d.img");
    alike_testing::sparse_image(&img, 64 << 20, 400, 3);
    let job = format!(
        r#"{{"type":"job","v":1,"id":"j","kind":"backup","params":{{"store":{{"location":"{}"}},"vm":"v","disks":["{}"],"threads":1}}}}"#,
        store.display(),
        img.display()
    );
    // The job line, then the input ends at once: the job is cancelled.
    let (exit, ev) = serve(&[&job], false);
    assert_eq!(exit, WorkerExit::Cancelled, "{ev:?}");
    let f = failure(&ev);
    assert_eq!(f.kind, "cancelled");
    assert!(f.message.contains("channel closed"), "{}", f.message);
    assert!(
        alike::Store::builder()
            .cache_dir(dir.path().join("c"))
            .open(&store)
            .unwrap()
            .versions(None)
            .unwrap()
            .is_empty()
    );
    // The same job with the input open runs to the end.
    let (exit, ev) = serve(&[&job], true);
    assert_eq!(exit, WorkerExit::Done, "{ev:?}");
    assert!(matches!(&ev[1], ProcessorEvent::Started(s) if s.job == "j" && s.pid == std::process::id()));
    let Some(ProcessorEvent::Done(d)) = ev.last() else { panic!("{ev:?}") };
    assert_eq!(d.result["vm"], "v");
}

#[test]
fn the_golden_jobs_are_the_facades_job_kinds() {
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/processor-v1.json")).unwrap(),
    )
    .unwrap();
    let mut kinds = Vec::new();
    for m in g["orchestrator"].as_array().unwrap() {
        let line = m["line"].as_str().unwrap();
        let Ok(OrchestratorMessage::Job(spec)) = decode_orchestrator(line.as_bytes()) else { continue };
        let job = ProcessorJob::from_spec(spec).unwrap_or_else(|e| panic!("{}: {e}", m["name"]));
        kinds.push(job.kind_name());
        // And back: the facade writes the same line.
        let again = encode(&OrchestratorMessage::Job(job.to_spec().unwrap()));
        assert_eq!(String::from_utf8(again.to_vec()).unwrap(), format!("{line}\n"));
    }
    assert_eq!(
        kinds,
        [
            "backup",
            "restore",
            "verify",
            "replicate-receiver",
            "xen-vm-config",
            "replicate-sender",
            "replicate-receiver",
            "replicate-both"
        ]
    );
}
