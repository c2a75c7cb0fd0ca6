//! NTLM, the acceptor's side (MS-NLMP), as a Windows host runs it behind
//! HTTP `Negotiate` for WinRM: NTLMv2 only, with extended session security,
//! and the session security (sealing and signing, connection-oriented) that
//! WinRM's message encryption uses.
//!
//! Written from MS-NLMP for the simulator alone (the client in
//! `alike-hyperv` has its own): pywinrm's NTLM (pyspnego) is what proves it
//! in the tests, and MS-NLMP §4.2.4's sample values pin the arithmetic.
//!
//! What a real host may do differently: it also speaks Kerberos and SPNEGO-
//! wrapped tokens (this acceptor takes raw NTLMSSP tokens only, which
//! Windows' Negotiate also accepts), checks the account against SAM or a
//! domain controller, and may refuse NTLM by policy.

use hmac::{Hmac, KeyInit as _, Mac as _};
use md4::{Digest as _, Md4};
use md5::Md5;
use rc4::{Rc4, StreamCipher as _};

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

/// NEGOTIATE_UNICODE.
pub(crate) const UNICODE: u32 = 0x0000_0001;
/// REQUEST_TARGET.
pub(crate) const REQUEST_TARGET: u32 = 0x0000_0004;
/// NEGOTIATE_SIGN.
pub(crate) const SIGN: u32 = 0x0000_0010;
/// NEGOTIATE_SEAL.
pub(crate) const SEAL: u32 = 0x0000_0020;
/// NEGOTIATE_NTLM.
pub(crate) const NTLM: u32 = 0x0000_0200;
/// NEGOTIATE_ALWAYS_SIGN.
pub(crate) const ALWAYS_SIGN: u32 = 0x0000_8000;
/// TARGET_TYPE_SERVER.
pub(crate) const TARGET_TYPE_SERVER: u32 = 0x0002_0000;
/// NEGOTIATE_EXTENDED_SESSIONSECURITY.
pub(crate) const EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
/// NEGOTIATE_TARGET_INFO.
pub(crate) const TARGET_INFO: u32 = 0x0080_0000;
/// NEGOTIATE_VERSION.
pub(crate) const VERSION: u32 = 0x0200_0000;
/// NEGOTIATE_128.
pub(crate) const N128: u32 = 0x2000_0000;
/// NEGOTIATE_KEY_EXCH.
pub(crate) const KEY_EXCH: u32 = 0x4000_0000;
/// NEGOTIATE_56.
pub(crate) const N56: u32 = 0x8000_0000;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum NtlmError {
    /// Not an NTLMSSP message of the expected type, or a field out of bounds.
    #[error("malformed NTLM message: {0}")]
    Malformed(&'static str),
    /// The client did not offer what WinRM's message encryption needs.
    #[error("NTLM flags refused: {0}")]
    Unsupported(&'static str),
    /// Unknown user, wrong password, anonymous, or a bad MIC.
    #[error("NTLM authentication failed: {0}")]
    Denied(&'static str),
    /// A sealed message whose signature does not verify.
    #[error("NTLM message signature does not verify")]
    BadSignature,
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Md5>>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn rc4(key: &[u8]) -> Rc4 {
    // Keys here are 5 to 16 bytes, inside RC4's 1..=256.
    <Rc4 as rc4::KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn from_utf16(b: &[u8]) -> Option<String> {
    if b.len() % 2 != 0 {
        return None;
    }
    let w: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    String::from_utf16(&w).ok()
}

/// NTOWFv2 (MS-NLMP §3.3.2): HMAC-MD5 of user (upper-cased) and domain
/// keyed with MD4 of the password.
pub(crate) fn ntowfv2(password: &str, user: &str, domain: &str) -> [u8; 16] {
    let nt: [u8; 16] = Md4::digest(utf16(password)).into();
    hmac_md5(&nt, &[&utf16(&user.to_uppercase()), &utf16(domain)])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The payload a `(len u16, maxlen u16, offset u32)` field at `at` names.
fn field(b: &[u8], at: usize) -> Result<&[u8], NtlmError> {
    let len = u16_at(b, at).ok_or(NtlmError::Malformed("truncated header"))? as usize;
    let off = u32_at(b, at + 4).ok_or(NtlmError::Malformed("truncated header"))? as usize;
    if len == 0 {
        return Ok(&[]);
    }
    off.checked_add(len).and_then(|end| b.get(off..end)).ok_or(NtlmError::Malformed("field outside the message"))
}

fn check_type(b: &[u8], t: u32) -> Result<(), NtlmError> {
    if b.get(..8) != Some(SIGNATURE) {
        return Err(NtlmError::Malformed("no NTLMSSP signature"));
    }
    if u32_at(b, 8) != Some(t) {
        return Err(NtlmError::Malformed("unexpected message type"));
    }
    Ok(())
}

/// The acceptor's view of one handshake.
#[derive(Debug)]
pub(crate) struct Acceptor {
    user: String,
    password: String,
    computer: String,
    negotiate: Vec<u8>,
    challenge: Vec<u8>,
    server_challenge: [u8; 8],
    flags: u32,
}

/// The host's names in the challenge's target info.
pub(crate) struct Names<'a> {
    /// NetBIOS computer name, e.g. `HV-SIM-01`.
    pub(crate) computer: &'a str,
    /// NetBIOS domain (workgroup) name.
    pub(crate) domain: &'a str,
}

fn av(out: &mut Vec<u8>, id: u16, value: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

impl Acceptor {
    /// Reads the client's NEGOTIATE and makes the CHALLENGE (returned as
    /// bytes to put in `WWW-Authenticate`). `challenge` is the 8-byte server
    /// challenge and `now` the FILETIME for MsvAvTimestamp (both given, so
    /// that tests can fix them).
    pub(crate) fn new(
        negotiate: &[u8],
        user: &str,
        password: &str,
        names: &Names<'_>,
        challenge: [u8; 8],
        now: u64,
    ) -> Result<(Acceptor, Vec<u8>), NtlmError> {
        check_type(negotiate, 1)?;
        let asked = u32_at(negotiate, 12).ok_or(NtlmError::Malformed("truncated NEGOTIATE"))?;
        if asked & EXTENDED_SESSIONSECURITY == 0 {
            return Err(NtlmError::Unsupported("extended session security (NTLMv1-style keys are not supported)"));
        }
        if asked & UNICODE == 0 {
            return Err(NtlmError::Unsupported("Unicode"));
        }
        let offered = UNICODE
            | REQUEST_TARGET
            | SIGN
            | SEAL
            | NTLM
            | ALWAYS_SIGN
            | EXTENDED_SESSIONSECURITY
            | VERSION
            | N128
            | KEY_EXCH
            | N56;
        let flags = (asked & offered) | TARGET_TYPE_SERVER | TARGET_INFO | NTLM | UNICODE;
        let target = utf16(names.domain);
        let mut info = Vec::new();
        av(&mut info, 2, &utf16(names.domain));
        av(&mut info, 1, &utf16(names.computer));
        av(&mut info, 4, &utf16(&names.domain.to_lowercase()));
        av(&mut info, 3, &utf16(&names.computer.to_lowercase()));
        av(&mut info, 7, &now.to_le_bytes());
        av(&mut info, 0, &[]);
        let mut m = Vec::with_capacity(56 + target.len() + info.len());
        m.extend_from_slice(SIGNATURE);
        m.extend_from_slice(&2u32.to_le_bytes());
        let target_off = 56u32;
        m.extend_from_slice(&(target.len() as u16).to_le_bytes());
        m.extend_from_slice(&(target.len() as u16).to_le_bytes());
        m.extend_from_slice(&target_off.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&challenge);
        m.extend_from_slice(&[0; 8]);
        let info_off = target_off + target.len() as u32;
        m.extend_from_slice(&(info.len() as u16).to_le_bytes());
        m.extend_from_slice(&(info.len() as u16).to_le_bytes());
        m.extend_from_slice(&info_off.to_le_bytes());
        // Version: Windows 10.0 build 17763 (Server 2019), NTLM revision 15.
        m.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
        m.extend_from_slice(&target);
        m.extend_from_slice(&info);
        let acceptor = Acceptor {
            user: user.to_owned(),
            password: password.to_owned(),
            computer: names.computer.to_owned(),
            negotiate: negotiate.to_vec(),
            challenge: m.clone(),
            server_challenge: challenge,
            flags,
        };
        Ok((acceptor, m))
    }

    /// Verifies the client's AUTHENTICATE; on success the session's
    /// security context and the user name as the client gave it.
    pub(crate) fn accept(self, auth: &[u8]) -> Result<(Session, String), NtlmError> {
        check_type(auth, 3)?;
        let nt = field(auth, 20)?;
        let domain = from_utf16(field(auth, 28)?).ok_or(NtlmError::Malformed("domain is not UTF-16"))?;
        let user = from_utf16(field(auth, 36)?).ok_or(NtlmError::Malformed("user is not UTF-16"))?;
        let enc_key = field(auth, 52)?;
        let flags = u32_at(auth, 60).ok_or(NtlmError::Malformed("truncated AUTHENTICATE"))?;
        if user.is_empty() || nt.len() <= 24 {
            return Err(NtlmError::Denied("anonymous or NTLMv1 response"));
        }
        // A local account: the user name compares without case, in any domain
        // naming this host (or none).
        let domain_ok = domain.is_empty()
            || domain.eq_ignore_ascii_case(&self.computer)
            || domain == "."
            || domain.eq_ignore_ascii_case("WORKGROUP");
        if !user.eq_ignore_ascii_case(&self.user) || !domain_ok {
            return Err(NtlmError::Denied("unknown user"));
        }
        let key = ntowfv2(&self.password, &user, &domain);
        let (proof, blob) = nt.split_at(16);
        let expected = hmac_md5(&key, &[&self.server_challenge, blob]);
        if !ct_eq(&expected, proof) {
            return Err(NtlmError::Denied("wrong password"));
        }
        let base = hmac_md5(&key, &[proof]);
        let exported: [u8; 16] = if flags & KEY_EXCH != 0 && self.flags & KEY_EXCH != 0 {
            let mut k: [u8; 16] =
                enc_key.try_into().map_err(|_| NtlmError::Malformed("encrypted session key is not 16 bytes"))?;
            rc4(&base).apply_keystream(&mut k);
            k
        } else {
            base
        };
        // The MIC, when the client says it sent one (MsvAvFlags bit 2 in its blob).
        if blob_has_mic(blob) {
            let mic = auth.get(72..88).ok_or(NtlmError::Malformed("no room for the MIC"))?;
            let mut zeroed = auth.to_vec();
            zeroed[72..88].fill(0);
            let want = hmac_md5(&exported, &[&self.negotiate, &self.challenge, &zeroed]);
            if !ct_eq(&want, mic) {
                return Err(NtlmError::Denied("MIC does not verify"));
            }
        }
        let negotiated = self.flags & flags;
        if negotiated & (SEAL | SIGN) != (SEAL | SIGN) {
            return Err(NtlmError::Unsupported("sealing and signing"));
        }
        Ok((Session::new(&exported, negotiated, false), user))
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the NTLMv2 client blob's AV pairs carry MsvAvFlags with the MIC bit.
fn blob_has_mic(blob: &[u8]) -> bool {
    // Blob: RespType, HiRespType, 6 reserved, timestamp 8, client challenge 8, 4 reserved, AV pairs.
    let mut at = 28;
    while let (Some(id), Some(len)) = (u16_at(blob, at), u16_at(blob, at + 2)) {
        let len = len as usize;
        if id == 0 {
            break;
        }
        if id == 6 {
            return u32_at(blob, at + 4).is_some_and(|f| f & 2 != 0);
        }
        at += 4 + len;
    }
    false
}

/// One direction's keys and state.
struct Direction {
    sign_key: [u8; 16],
    seal: Rc4,
    seq: u32,
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direction").field("seq", &self.seq).finish_non_exhaustive()
    }
}

fn direction(exported: &[u8; 16], flags: u32, client_to_server: bool) -> Direction {
    let (sign, seal) = if client_to_server {
        (
            &b"session key to client-to-server signing key magic constant\0"[..],
            &b"session key to client-to-server sealing key magic constant\0"[..],
        )
    } else {
        (
            &b"session key to server-to-client signing key magic constant\0"[..],
            &b"session key to server-to-client sealing key magic constant\0"[..],
        )
    };
    let base: &[u8] = if flags & N128 != 0 {
        exported
    } else if flags & N56 != 0 {
        &exported[..7]
    } else {
        &exported[..5]
    };
    Direction { sign_key: md5(&[exported, sign]), seal: rc4(&md5(&[base, seal])), seq: 0 }
}

/// An established NTLM session's security (MS-NLMP §3.4, extended session
/// security, connection-oriented: one RC4 state per direction for the
/// whole connection).
#[derive(Debug)]
pub(crate) struct Session {
    flags: u32,
    outgoing: Direction,
    incoming: Direction,
}

impl Session {
    /// `initiator` picks the client's view (tests use both ends).
    pub(crate) fn new(exported: &[u8; 16], flags: u32, initiator: bool) -> Session {
        let c2s = direction(exported, flags, true);
        let s2c = direction(exported, flags, false);
        let (outgoing, incoming) = if initiator { (c2s, s2c) } else { (s2c, c2s) };
        Session { flags, outgoing, incoming }
    }

    fn mac(d: &mut Direction, flags: u32, msg: &[u8]) -> [u8; 16] {
        let seq = d.seq.to_le_bytes();
        let mut checksum: [u8; 8] = hmac_md5(&d.sign_key, &[&seq, msg])[..8].try_into().unwrap_or_default();
        if flags & KEY_EXCH != 0 {
            d.seal.apply_keystream(&mut checksum);
        }
        let mut sig = [0u8; 16];
        sig[..4].copy_from_slice(&1u32.to_le_bytes());
        sig[4..12].copy_from_slice(&checksum);
        sig[12..].copy_from_slice(&seq);
        d.seq = d.seq.wrapping_add(1);
        sig
    }

    /// Seals `msg` in place and returns its 16-byte signature.
    pub(crate) fn seal(&mut self, msg: &mut [u8]) -> [u8; 16] {
        let plain = msg.to_vec();
        self.outgoing.seal.apply_keystream(msg);
        Session::mac(&mut self.outgoing, self.flags, &plain)
    }

    /// Unseals `msg` in place and checks `signature`.
    pub(crate) fn unseal(&mut self, msg: &mut [u8], signature: &[u8]) -> Result<(), NtlmError> {
        self.incoming.seal.apply_keystream(msg);
        let want = Session::mac(&mut self.incoming, self.flags, msg);
        if ct_eq(&want, signature) { Ok(()) } else { Err(NtlmError::BadSignature) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// MS-NLMP §4.2.4 (NTLMv2 authentication) sample values.
    #[test]
    fn ms_nlmp_ntlmv2_samples() {
        assert_eq!(ntowfv2("Password", "User", "Domain").to_vec(), hex("0c868a403bfd7a93a3001ef22ef02e3f"));
        // §4.2.4.4: GSS_WrapEx of "Plaintext" (UTF-16) with the random session
        // key 0x55… and flags with KEY_EXCH, 128, 56, ESS, SEAL, SIGN.
        let exported = [0x55u8; 16];
        let flags = 0xe28a_8233;
        let mut client = Session::new(&exported, flags, true);
        let mut msg = utf16("Plaintext");
        let sig = client.seal(&mut msg);
        assert_eq!(msg, hex("54e50165bf1936dc996020c1811b0f06fb5f"));
        assert_eq!(sig.to_vec(), hex("01000000 7fb38ec5c55d4976 00000000"));
        // And the server's end reads it back.
        let mut server = Session::new(&exported, flags, false);
        server.unseal(&mut msg, &sig).unwrap();
        assert_eq!(msg, utf16("Plaintext"));
    }

    #[test]
    fn a_tampered_message_fails_its_signature() {
        let exported = [7u8; 16];
        let flags = SEAL | SIGN | KEY_EXCH | N128 | EXTENDED_SESSIONSECURITY;
        let mut c = Session::new(&exported, flags, true);
        let mut s = Session::new(&exported, flags, false);
        let mut m = b"<s:Envelope/>".to_vec();
        let sig = c.seal(&mut m);
        m[3] ^= 1;
        assert_eq!(s.unseal(&mut m, &sig), Err(NtlmError::BadSignature));
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        let names = Names { computer: "HV", domain: "WG" };
        for b in [&b""[..], b"NTLMSSP\0", b"NTLMSSP\0\x01\0\0\0", &[0xff; 40]] {
            assert!(Acceptor::new(b, "u", "p", &names, [0; 8], 0).is_err());
        }
    }
}
