//! The blocking TCP shell over 127.0.0.1: a whole exchange of two disks,
//! push and pull, and an end that goes away mid-run.

use std::net::TcpListener;

use alike_repl::net::{Connection, DEFAULT_PORT, Flow};
use alike_repl::{Dial, Error, Receiver, Sender, wire};

use super::util::*;

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

fn drive_sender(conn: &mut Connection<Sender>, se: &mut SenderEngine) -> Result<Vec<u8>, Error> {
    conn.drive(|s| {
        se.step(s)?;
        Ok(match &se.acked {
            Some(p) => Flow::Done(p.clone()),
            None => Flow::Wait,
        })
    })
}

fn drive_receiver(conn: &mut Connection<Receiver>, re: &mut ReceiverEngine) -> Result<Vec<u8>, Error> {
    conn.drive(|r| {
        re.step(r)?;
        Ok(match &re.acked {
            Some(p) => Flow::Done(p.clone()),
            None => Flow::Wait,
        })
    })
}

#[test]
fn a_vm_of_two_disks_crosses_a_tcp_connection() {
    assert_eq!(DEFAULT_PORT, 2812);
    let vm = two_disks(30);
    let l = listener();
    let addr = l.local_addr().unwrap();
    // Push: the sender dials the receiver.
    let receiver = std::thread::spawn(move || {
        let mut re = ReceiverEngine::new(Replica::default());
        let r = Receiver::new(receiver_config(Dial::Accept), re.replica_info()).unwrap();
        let mut conn = Connection::accept(&l, r).unwrap();
        let point = drive_receiver(&mut conn, &mut re).unwrap();
        let r = conn.close().unwrap();
        (point, re, r.stats())
    });
    let mut se = SenderEngine::new(vm.clone(), &[None, None], 64);
    let mut conn = Connection::connect(addr, Sender::new(sender_config(Dial::Connect)).unwrap()).unwrap();
    let point = drive_sender(&mut conn, &mut se).unwrap();
    let s = conn.close().unwrap();
    let (rpoint, re, rstats) = receiver.join().unwrap();
    assert_eq!(point, b"point-1");
    assert_eq!(rpoint, b"point-1");
    assert_eq!(re.replica.disks[&0], vm[0].1);
    assert_eq!(re.replica.disks[&1], vm[1].1);
    assert_eq!(s.stats().wire_sent, rstats.wire_received);
    assert_eq!(s.stats().wire_received, rstats.wire_sent);
    assert_eq!(s.stats().data_raw_bytes, rstats.data_raw_bytes);
}

#[test]
fn pull_the_receiver_dials_the_sender() {
    let vm = two_disks(31);
    let l = listener();
    let addr = l.local_addr().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut re = ReceiverEngine::new(Replica::default());
        let r = Receiver::new(receiver_config(Dial::Connect), re.replica_info()).unwrap();
        let mut conn = Connection::connect(addr, r).unwrap();
        let point = drive_receiver(&mut conn, &mut re).unwrap();
        conn.close().unwrap();
        (point, re)
    });
    let mut se = SenderEngine::new(vm.clone(), &[None, None], 64);
    let s = Sender::new(sender_config(Dial::Accept)).unwrap();
    let mut conn = Connection::accept(&l, s).unwrap();
    let point = drive_sender(&mut conn, &mut se).unwrap();
    conn.close().unwrap();
    let (rpoint, re) = receiver.join().unwrap();
    assert_eq!((point.as_slice(), rpoint.as_slice()), (&b"point-1"[..], &b"point-1"[..]));
    assert_eq!(re.replica.disks[&1], vm[1].1);
}

#[test]
fn a_receiver_that_goes_away_mid_run_fails_the_sender_cleanly() {
    let vm = two_disks(32);
    let l = listener();
    let addr = l.local_addr().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut re = ReceiverEngine::new(Replica::default());
        let r = Receiver::new(receiver_config(Dial::Accept), re.replica_info()).unwrap();
        let mut conn = Connection::accept(&l, r).unwrap();
        // Run until the first data arrived, then vanish (the socket is dropped).
        re.stop_after_data = true;
        let got = conn.drive(|r| {
            re.step(r)?;
            Ok(if re.stopped { Flow::Done(()) } else { Flow::Wait })
        });
        got.unwrap();
        drop(conn);
        re
    });
    let mut se = SenderEngine::new(vm, &[None, None], 4);
    let s = Sender::new(sender_config(Dial::Connect)).unwrap();
    let mut conn = Connection::connect(addr, s).unwrap();
    let err = drive_sender(&mut conn, &mut se).unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. } | Error::Io { .. }), "{err}");
    assert!(se.acked.is_none());
    let re = receiver.join().unwrap();
    assert!(re.replica.points.is_empty());
}

#[test]
fn an_abort_crosses_the_socket() {
    let vm = two_disks(33);
    let l = listener();
    let addr = l.local_addr().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut re = ReceiverEngine::new(Replica::default());
        let r = Receiver::new(receiver_config(Dial::Accept), re.replica_info()).unwrap();
        let mut conn = Connection::accept(&l, r).unwrap();
        re.stop_after_data = true;
        conn.drive(|r| {
            re.step(r)?;
            Ok(if re.stopped { Flow::Done(()) } else { Flow::Wait })
        })
        .unwrap();
        conn.machine().abort(wire::ERR_ENGINE, "disk full");
        // close() writes the error message before closing.
        conn.close().unwrap();
    });
    let mut se = SenderEngine::new(vm, &[None, None], 4);
    let mut conn = Connection::connect(addr, Sender::new(sender_config(Dial::Connect)).unwrap()).unwrap();
    let err = drive_sender(&mut conn, &mut se).unwrap_err();
    receiver.join().unwrap();
    assert!(
        matches!(&err, Error::Peer { code: wire::ERR_ENGINE, message } if message == "disk full")
            || matches!(err, Error::Io { .. }),
        "{err}"
    );
}
