//! The golden messages of `testdata/processor-v1.json`: every line decodes
//! and encodes back to the same bytes, every refused line gives its exact
//! error, the orchestrator's machine hands out the job line unchanged, and
//! the fuzz body survives the lines mutated (a stable smoke test of the
//! `processor` fuzz target).

use alike_remote::protocol::{Orchestrator, Step, decode_orchestrator, decode_worker, encode, fuzz_one};
use serde_json::Value;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/processor-v1.json");

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap()
}

fn lines(g: &Value, side: &str) -> Vec<(String, String)> {
    g[side]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["line"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn every_golden_line_round_trips_byte_for_byte() {
    let g = golden();
    assert_eq!(g["version"], 1);
    for (name, line) in lines(&g, "orchestrator") {
        let m = decode_orchestrator(line.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(String::from_utf8(encode(&m).to_vec()).unwrap(), format!("{line}\n"), "{name}");
    }
    for (name, line) in lines(&g, "processor") {
        let m = decode_worker(line.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(String::from_utf8(encode(&m).to_vec()).unwrap(), format!("{line}\n"), "{name}");
    }
}

#[test]
fn refused_lines_give_their_exact_errors() {
    for r in golden()["refused"].as_array().unwrap() {
        let line = r["line"].as_str().unwrap().as_bytes();
        let e = match r["from"].as_str().unwrap() {
            "processor" => decode_worker(line).unwrap_err().to_string(),
            _ => decode_orchestrator(line).unwrap_err().to_string(),
        };
        assert_eq!(e, r["error"].as_str().unwrap(), "{}", r["name"]);
    }
}

#[test]
fn the_orchestrator_sends_the_golden_job_after_the_golden_hello() {
    let g = golden();
    let orch = lines(&g, "orchestrator");
    let proc = lines(&g, "processor");
    let job_line = &orch[0].1;
    let Ok(alike_remote::protocol::OrchestratorMessage::Job(spec)) = decode_orchestrator(job_line.as_bytes()) else {
        panic!("the first orchestrator line is a job")
    };
    let mut o = Orchestrator::new(spec);
    let Step::Send(sent) = o.handle_line(proc[0].1.as_bytes()).unwrap() else { panic!("hello → the job") };
    assert_eq!(&sent[..], format!("{job_line}\n").as_bytes());
    let mut events = Vec::new();
    for (name, line) in &proc[1..] {
        match o.handle_line(line.as_bytes()).unwrap() {
            Step::Event(e) => events.push(e.type_name()),
            Step::Finished(Ok(r)) => {
                assert_eq!(name, "done");
                assert_eq!(r["read_bytes"], 67108864);
                break;
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(events, ["started", "queued", "listening", "progress", "progress", "progress", "warning"]);
}

#[test]
fn the_fuzz_body_survives_mutated_golden_streams() {
    let g = golden();
    let stream: Vec<u8> = lines(&g, "processor").iter().flat_map(|(_, l)| format!("{l}\n").into_bytes()).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for chunking in [0u8, 1, 7, 60] {
        let base: Vec<u8> = std::iter::once(chunking).chain(stream.iter().copied()).collect();
        fuzz_one(&base);
        for _ in 0..200 {
            let mut b = base.clone();
            for _ in 0..1 + next() % 4 {
                let at = 1 + (next() as usize) % (b.len() - 1);
                match next() % 4 {
                    0 => b[at] ^= 1 << (next() % 8),
                    1 => b[at] = next() as u8,
                    2 => b[at] = b'\n',
                    _ => b.truncate(at.max(2)),
                }
            }
            fuzz_one(&b);
        }
    }
    fuzz_one(&[]);
    fuzz_one(&[0; 5000]);
}
