//! NTLM, the initiator's side (MS-NLMP), as WinRM's `Negotiate` over HTTP
//! uses it: NEGOTIATE, then AUTHENTICATE with an NTLMv2 response, a random
//! session key sent under key exchange, and a MIC; then session security
//! for WinRM's message encryption (seal + sign, connection-oriented, one
//! RC4 stream per direction).
//!
//! Why our own: the well-kept Rust implementation (Devolutions' `sspi`)
//! brings ~250 crates (Kerberos, ASN.1, RSA, TLS) for the one mechanism we
//! use; MS-NLMP's NTLMv2 is a few hundred lines over RustCrypto's MD4,
//! MD5, HMAC and RC4, and MS-NLMP §4.2.4's sample values pin it (tests
//! below). Nothing is shared with the simulator's acceptor.
//!
//! Not spoken: NTLMv1/LM, anonymous, SPNEGO wrapping, channel bindings
//! (only needed over HTTPS), Kerberos.

use hmac::{Hmac, Mac as _};
use md4::{Digest as _, Md4};
use md5::Md5;
use rc4::{Rc4, StreamCipher as _};

const SIG: &[u8; 8] = b"NTLMSSP\0";
const F_UNICODE: u32 = 0x0000_0001;
const F_REQUEST_TARGET: u32 = 0x0000_0004;
const F_SIGN: u32 = 0x0000_0010;
const F_SEAL: u32 = 0x0000_0020;
const F_NTLM: u32 = 0x0000_0200;
const F_ALWAYS_SIGN: u32 = 0x0000_8000;
const F_ESS: u32 = 0x0008_0000;
const F_VERSION: u32 = 0x0200_0000;
const F_128: u32 = 0x2000_0000;
const F_KEY_EXCH: u32 = 0x4000_0000;
const F_56: u32 = 0x8000_0000;

/// What the client asks for in NEGOTIATE.
const OFFER: u32 = F_UNICODE
    | F_REQUEST_TARGET
    | F_SIGN
    | F_SEAL
    | F_NTLM
    | F_ALWAYS_SIGN
    | F_ESS
    | F_VERSION
    | F_128
    | F_KEY_EXCH
    | F_56;

/// Why a handshake or a message failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NtlmError {
    /// The server's CHALLENGE is malformed.
    #[error("malformed NTLM challenge: {0}")]
    BadChallenge(&'static str),
    /// The server did not agree to what message encryption needs.
    #[error("the server's NTLM flags lack {0}")]
    Refused(&'static str),
    /// A sealed message from the server does not verify.
    #[error("an NTLM-sealed message from the server does not verify")]
    BadSignature,
    /// The system's random source failed.
    #[error("no randomness for NTLM: {0}")]
    Random(String),
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC takes a key of any length: this cannot fail.
    let mut m = <Hmac<Md5> as hmac::KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn rc4(key: &[u8]) -> Rc4 {
    // Our keys are 5..=16 bytes; RC4 takes 1..=256.
    <Rc4 as rc4::KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

fn le16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn rd16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|x| u16::from_le_bytes([x[0], x[1]]))
}

fn rd32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
}

/// The response key (NTOWFv2): HMAC-MD5 keyed with MD4(password) over
/// UPPER(user) ‖ domain, all UTF-16LE.
pub(crate) fn response_key(password: &str, user: &str, domain: &str) -> [u8; 16] {
    let nt_hash: [u8; 16] = Md4::digest(le16(password)).into();
    hmac_md5(&nt_hash, &[&le16(&user.to_uppercase()), &le16(domain)])
}

/// The parts of the server's CHALLENGE this client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) flags: u32,
    pub(crate) server_challenge: [u8; 8],
    pub(crate) target_info: Vec<u8>,
}

/// Parses a CHALLENGE message (total: every length checked).
pub(crate) fn parse_challenge(m: &[u8]) -> Result<Challenge, NtlmError> {
    if m.get(..8) != Some(SIG) || rd32(m, 8) != Some(2) {
        return Err(NtlmError::BadChallenge("not an NTLMSSP CHALLENGE"));
    }
    let flags = rd32(m, 20).ok_or(NtlmError::BadChallenge("truncated"))?;
    let server_challenge: [u8; 8] =
        m.get(24..32).and_then(|c| c.try_into().ok()).ok_or(NtlmError::BadChallenge("truncated"))?;
    let (len, off) = (rd16(m, 40), rd32(m, 44));
    let target_info = match (len, off) {
        (Some(0), _) | (None, _) => Vec::new(),
        (Some(l), Some(o)) => (o as usize)
            .checked_add(l as usize)
            .and_then(|end| m.get(o as usize..end))
            .ok_or(NtlmError::BadChallenge("target info outside the message"))?
            .to_vec(),
        (Some(_), None) => return Err(NtlmError::BadChallenge("truncated")),
    };
    Ok(Challenge { flags, server_challenge, target_info })
}

/// AV pairs of a target info, as (id, value).
fn av_pairs(info: &[u8]) -> Result<Vec<(u16, &[u8])>, NtlmError> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let id = rd16(info, at).ok_or(NtlmError::BadChallenge("target info is not terminated"))?;
        let len = rd16(info, at + 2).ok_or(NtlmError::BadChallenge("target info is not terminated"))? as usize;
        if id == 0 {
            return Ok(out);
        }
        let v = info.get(at + 4..at + 4 + len).ok_or(NtlmError::BadChallenge("AV pair past the end"))?;
        out.push((id, v));
        at += 4 + len;
    }
}

/// The client's NEGOTIATE message.
pub(crate) fn negotiate() -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    m.extend_from_slice(SIG);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&OFFER.to_le_bytes());
    m.extend_from_slice(&[0; 16]); // no domain, no workstation
    m.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]); // version 10.0.17763, NTLM revision 15
    m
}

/// The AUTHENTICATE inputs a test may fix (MS-NLMP's samples do).
#[derive(Debug, Clone)]
pub(crate) struct Randoms {
    pub(crate) client_challenge: [u8; 8],
    pub(crate) session_key: [u8; 16],
    /// FILETIME used when the server sent no MsvAvTimestamp.
    pub(crate) now: u64,
}

impl Randoms {
    pub(crate) fn draw() -> Result<Randoms, NtlmError> {
        let mut b = [0u8; 24];
        alike_core::random_bytes(&mut b).map_err(|e| NtlmError::Random(e.to_string()))?;
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let now = (unix.as_secs() + 11_644_473_600) * 10_000_000 + u64::from(unix.subsec_nanos() / 100);
        let mut client_challenge = [0u8; 8];
        client_challenge.copy_from_slice(&b[..8]);
        let mut session_key = [0u8; 16];
        session_key.copy_from_slice(&b[8..]);
        Ok(Randoms { client_challenge, session_key, now })
    }
}

/// The NTLMv2 response (NTProofStr ‖ blob) and the session base key.
pub(crate) fn ntlmv2_response(
    key: &[u8; 16],
    server_challenge: &[u8; 8],
    client_challenge: &[u8; 8],
    time: u64,
    target_info: &[u8],
) -> (Vec<u8>, [u8; 16]) {
    let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
    blob.extend_from_slice(&time.to_le_bytes());
    blob.extend_from_slice(client_challenge);
    blob.extend_from_slice(&[0; 4]);
    blob.extend_from_slice(target_info);
    blob.extend_from_slice(&[0; 4]);
    let proof = hmac_md5(key, &[server_challenge, &blob]);
    let base = hmac_md5(key, &[&proof]);
    let mut resp = proof.to_vec();
    resp.extend_from_slice(&blob);
    (resp, base)
}

/// Makes the AUTHENTICATE message for `challenge` (the bytes of the
/// server's CHALLENGE) and the session's security. `user` may be
/// `DOMAIN\user` or `user@domain`.
pub(crate) fn authenticate(
    negotiate_msg: &[u8],
    challenge_msg: &[u8],
    user: &str,
    password: &str,
    r: &Randoms,
) -> Result<(Vec<u8>, Session), NtlmError> {
    let c = parse_challenge(challenge_msg)?;
    for (flag, what) in
        [(F_ESS, "extended session security"), (F_SEAL, "sealing"), (F_SIGN, "signing"), (F_UNICODE, "Unicode")]
    {
        if c.flags & flag == 0 {
            return Err(NtlmError::Refused(what));
        }
    }
    let (domain, name) = match (user.split_once('\\'), user.split_once('@')) {
        (Some((d, u)), _) => (d.to_owned(), u.to_owned()),
        (None, Some((u, d))) => (d.to_owned(), u.to_owned()),
        (None, None) => (String::new(), user.to_owned()),
    };
    // Our target info: the server's, with MsvAvFlags saying a MIC follows.
    let pairs = av_pairs(&c.target_info)?;
    let timestamp =
        pairs.iter().find(|(id, _)| *id == 7).and_then(|(_, v)| <[u8; 8]>::try_from(*v).ok()).map(u64::from_le_bytes);
    let mut info = Vec::new();
    let mut flags_done = false;
    for (id, v) in &pairs {
        let v: Vec<u8> = if *id == 6 {
            flags_done = true;
            let f = v.get(..4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            (f | 2).to_le_bytes().to_vec()
        } else {
            v.to_vec()
        };
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&(v.len() as u16).to_le_bytes());
        info.extend_from_slice(&v);
    }
    if !flags_done {
        info.extend_from_slice(&6u16.to_le_bytes());
        info.extend_from_slice(&4u16.to_le_bytes());
        info.extend_from_slice(&2u32.to_le_bytes());
    }
    info.extend_from_slice(&[0; 4]);
    let key = response_key(password, &name, &domain);
    let (nt, base) = ntlmv2_response(&key, &c.server_challenge, &r.client_challenge, timestamp.unwrap_or(r.now), &info);
    // With a server timestamp the LMv2 response is all zeroes (MS-NLMP §3.1.5.1.2).
    let lm = vec![0u8; 24];
    let flags = c.flags & OFFER;
    let (exported, enc_key) = if flags & F_KEY_EXCH != 0 {
        let mut k = r.session_key;
        rc4(&base).apply_keystream(&mut k);
        (r.session_key, k.to_vec())
    } else {
        (base, Vec::new())
    };
    let fields: [Vec<u8>; 6] = [lm, nt, le16(&domain), le16(&name), le16(""), enc_key];
    // Header: 8 sig, 4 type, 6 fields × 8 (LM, NT, domain, user, workstation, key), 4 flags, 8 version, 16 MIC.
    let header = 88usize;
    let mut m = Vec::with_capacity(header + fields.iter().map(Vec::len).sum::<usize>());
    m.extend_from_slice(SIG);
    m.extend_from_slice(&3u32.to_le_bytes());
    let order = [0usize, 1, 2, 3, 4, 5];
    // Payload order: domain, user, workstation, LM, NT, key (as Windows lays it out).
    let payload_order = [2usize, 3, 4, 0, 1, 5];
    let mut offsets = [0u32; 6];
    let mut at = header as u32;
    for i in payload_order {
        offsets[i] = at;
        at += fields[i].len() as u32;
    }
    for i in order {
        m.extend_from_slice(&(fields[i].len() as u16).to_le_bytes());
        m.extend_from_slice(&(fields[i].len() as u16).to_le_bytes());
        m.extend_from_slice(&offsets[i].to_le_bytes());
    }
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
    m.extend_from_slice(&[0; 16]);
    for i in payload_order {
        m.extend_from_slice(&fields[i]);
    }
    let mic = hmac_md5(&exported, &[negotiate_msg, challenge_msg, &m]);
    m[72..88].copy_from_slice(&mic);
    Ok((m, Session::new(&exported, flags)))
}

/// A session with a fixed key, for tests and the fuzz body.
pub(crate) fn test_session() -> Session {
    Session::new(&[7; 16], F_SEAL | F_SIGN | F_KEY_EXCH | F_128 | F_ESS)
}

struct Keys {
    sign: [u8; 16],
    seal: Rc4,
    seq: u32,
}

fn md5(a: &[u8], b: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(a);
    h.update(b);
    h.finalize().into()
}

/// Session security of an authenticated connection (the client's end).
pub(crate) struct Session {
    flags: u32,
    send: Keys,
    recv: Keys,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("send_seq", &self.send.seq)
            .field("recv_seq", &self.recv.seq)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn new(exported: &[u8; 16], flags: u32) -> Session {
        let seal_base: &[u8] = if flags & F_128 != 0 {
            exported
        } else if flags & F_56 != 0 {
            &exported[..7]
        } else {
            &exported[..5]
        };
        let keys =
            |sign: &[u8], seal: &[u8]| Keys { sign: md5(exported, sign), seal: rc4(&md5(seal_base, seal)), seq: 0 };
        Session {
            flags,
            send: keys(
                b"session key to client-to-server signing key magic constant\0",
                b"session key to client-to-server sealing key magic constant\0",
            ),
            recv: keys(
                b"session key to server-to-client signing key magic constant\0",
                b"session key to server-to-client sealing key magic constant\0",
            ),
        }
    }

    fn signature(k: &mut Keys, flags: u32, plain: &[u8]) -> [u8; 16] {
        let seq = k.seq.to_le_bytes();
        let mac = hmac_md5(&k.sign, &[&seq, plain]);
        let mut checksum = [0u8; 8];
        checksum.copy_from_slice(&mac[..8]);
        if flags & F_KEY_EXCH != 0 {
            k.seal.apply_keystream(&mut checksum);
        }
        k.seq = k.seq.wrapping_add(1);
        let mut sig = [0u8; 16];
        sig[0] = 1;
        sig[4..12].copy_from_slice(&checksum);
        sig[12..].copy_from_slice(&seq);
        sig
    }

    /// Encrypts `msg` in place; returns its signature.
    pub(crate) fn seal(&mut self, msg: &mut [u8]) -> [u8; 16] {
        let plain = msg.to_vec();
        self.send.seal.apply_keystream(msg);
        Session::signature(&mut self.send, self.flags, &plain)
    }

    /// Decrypts `msg` in place and checks `sig`.
    pub(crate) fn unseal(&mut self, msg: &mut [u8], sig: &[u8]) -> Result<(), NtlmError> {
        self.recv.seal.apply_keystream(msg);
        let want = Session::signature(&mut self.recv, self.flags, msg);
        let diff = want.iter().zip(sig).fold(u8::from(sig.len() != 16), |a, (x, y)| a | (x ^ y));
        if diff == 0 { Ok(()) } else { Err(NtlmError::BadSignature) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// MS-NLMP §4.2.4: user "User", domain "Domain", password "Password",
    /// server challenge 0123456789abcdef, client challenge aa…, time 0,
    /// target info NetBIOS domain "Domain" and server "Server".
    #[test]
    fn ms_nlmp_ntlmv2_sample() {
        let key = response_key("Password", "User", "Domain");
        assert_eq!(key.to_vec(), hex("0c868a403bfd7a93a3001ef22ef02e3f"));
        let mut info = Vec::new();
        for (id, v) in [(2u16, "Domain"), (1, "Server")] {
            let v = le16(v);
            info.extend_from_slice(&id.to_le_bytes());
            info.extend_from_slice(&(v.len() as u16).to_le_bytes());
            info.extend_from_slice(&v);
        }
        info.extend_from_slice(&[0; 4]);
        let sc: [u8; 8] = hex("0123456789abcdef").try_into().unwrap();
        let (resp, base) = ntlmv2_response(&key, &sc, &[0xaa; 8], 0, &info);
        assert_eq!(resp[..16].to_vec(), hex("68cd0ab851e51c96aabc927bebef6a1c"));
        assert_eq!(base.to_vec(), hex("8de40ccadbc14a82f15cb0ad0de95ca3"));
        // The random session key 55… under key exchange.
        let mut k = [0x55u8; 16];
        rc4(&base).apply_keystream(&mut k);
        assert_eq!(k.to_vec(), hex("c5dad2544fc9799094ce1ce90bc9d03e"));
        // §4.2.4.4: sealing "Plaintext" with the session's first message.
        let mut s = Session::new(&[0x55; 16], 0xe28a_8233);
        let mut msg = le16("Plaintext");
        let sig = s.seal(&mut msg);
        assert_eq!(msg, hex("54e50165bf1936dc996020c1811b0f06fb5f"));
        assert_eq!(sig.to_vec(), hex("01000000 7fb38ec5c55d4976 00000000"));
    }

    #[test]
    fn bad_challenges_are_errors() {
        for m in [&b""[..], b"NTLMSSP\0\x02\0\0\0", &[0u8; 64]] {
            assert!(parse_challenge(m).is_err());
        }
        let mut m = b"NTLMSSP\0\x02\0\0\0".to_vec();
        m.resize(48, 0);
        m[40] = 200; // target info longer than the message
        m[44] = 48;
        assert!(parse_challenge(&m).is_err());
    }
}
