//! `alike-delay-proxy --listen ADDR --to HOST:PORT [--delay-ms N] [--rate BYTES_PER_S] [--stats FILE]`:
//! a TCP proxy that delays each direction by N ms and caps each direction's
//! rate (see `alike_testing::proxy`). Prints `listening on ADDR`, then runs
//! until killed; with `--stats` it rewrites FILE with `UP DOWN` (bytes
//! carried each way) every 100 ms.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::time::Duration;

use alike_testing::proxy::{DelayProxy, LinkShape};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let listen = get("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let Some(to) = get("--to").and_then(|t| t.to_socket_addrs().ok()).and_then(|mut a| a.next()) else {
        eprintln!(
            "usage: alike-delay-proxy --listen ADDR --to HOST:PORT [--delay-ms N] [--rate BYTES_PER_S] [--stats FILE]"
        );
        std::process::exit(2);
    };
    let delay = Duration::from_millis(get("--delay-ms").and_then(|d| d.parse().ok()).unwrap_or(0));
    let rate = get("--rate").and_then(|r| r.parse().ok());
    let proxy = match DelayProxy::start(&listen, to, LinkShape { delay, rate }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("alike-delay-proxy: {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {}", proxy.addr());
    let _ = std::io::stdout().flush();
    let stats = get("--stats");
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(f) = &stats {
            let (up, down) = proxy.carried();
            let tmp = format!("{f}.tmp");
            if std::fs::write(&tmp, format!("{up} {down}\n")).is_ok() {
                let _ = std::fs::rename(&tmp, f);
            }
        }
    }
}
