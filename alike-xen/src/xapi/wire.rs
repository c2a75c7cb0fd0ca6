//! XAPI's wire shapes, sans I/O: JSON-RPC request encoding, reply decoding
//! (v2.0 error objects, v1.0 error arrays, and the `Status`/`Failure`
//! struct of the old `/json` backend), a task's XML-RPC-encoded result, and
//! the changed-block bitmap of `VDI.list_changed_blocks`.

use std::ops::Range;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::{Error, Result};

/// A JSON-RPC 2.0 request body (`params` already hold the session ref first where one is needed).
pub(crate) fn encode_request(method: &str, params: &[Value], id: u64) -> Vec<u8> {
    let v = json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": id });
    // Serialising a Value to a Vec cannot fail.
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A XAPI failure: the error code and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: String,
    pub(crate) params: Vec<String>,
}

impl Failure {
    pub(crate) fn into_error(self, method: &str) -> Error {
        Error::Xapi { method: method.to_owned(), code: self.code, params: self.params }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `["CODE", p1, p2…]` as a failure.
fn failure_from_list(list: &[Value]) -> Option<Failure> {
    let (code, params) = list.split_first()?;
    Some(Failure { code: text(code), params: params.iter().map(text).collect() })
}

/// Decodes a JSON-RPC reply body: `Ok(Ok(result))`, `Ok(Err(failure))` for
/// a XAPI error in any of its shapes.
///
/// # Errors
/// [`Error::BadReply`] when the body is not JSON or not a reply.
pub(crate) fn decode_reply(method: &str, body: &[u8]) -> Result<std::result::Result<Value, Failure>> {
    let bad = |reason: String| Error::BadReply { method: method.to_owned(), reason };
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let head: String =
            String::from_utf8_lossy(&body[..body.len().min(120)]).chars().filter(|c| !c.is_control()).collect();
        bad(format!("not JSON ({e}): {head:?}"))
    })?;
    let Value::Object(obj) = v else { return Err(bad("not a JSON object".into())) };
    // The old `/json` backend (and XML-RPC's shape): {"Status": "Success"|"Failure", ...}.
    if let Some(status) = obj.get("Status") {
        return match status.as_str() {
            Some("Success") => Ok(Ok(obj.get("Value").cloned().unwrap_or(Value::Null))),
            Some("Failure") => match obj.get("ErrorDescription") {
                Some(Value::Array(list)) => {
                    failure_from_list(list).map(Err).ok_or_else(|| bad("empty ErrorDescription".into()))
                }
                _ => Err(bad("Failure without an ErrorDescription list".into())),
            },
            _ => Err(bad(format!("Status is {status}"))),
        };
    }
    match obj.get("error") {
        None | Some(Value::Null) => {}
        // JSON-RPC 1.0 as XAPI sends it: ["CODE", params…].
        Some(Value::Array(list)) => {
            return failure_from_list(list).map(Err).ok_or_else(|| bad("empty error list".into()));
        }
        // JSON-RPC 2.0: {"code": 1, "message": "CODE", "data": [params…]}.
        Some(Value::Object(e)) => {
            let code = e.get("message").map(text).filter(|c| !c.is_empty());
            let Some(code) = code else {
                return Err(bad(format!("error object without a message: {}", Value::Object(e.clone()))));
            };
            let params = match e.get("data") {
                Some(Value::Array(d)) => d.iter().map(text).collect(),
                None | Some(Value::Null) => vec![],
                Some(other) => vec![text(other)],
            };
            return Ok(Err(Failure { code, params }));
        }
        Some(Value::String(s)) => return Ok(Err(Failure { code: s.clone(), params: vec![] })),
        Some(other) => return Err(bad(format!("error is {other}"))),
    }
    match obj.get("result") {
        Some(r) => Ok(Ok(r.clone())),
        None => Err(bad("neither result nor error".into())),
    }
}

/// The value inside a task's `result`: XAPI stores the XML-RPC encoding
/// of the return value (`<value>OpaqueRef:…</value>`), even for JSON-RPC
/// clients; `""` for void. Strings and refs come out as text; anything
/// else (arrays, structs) is returned as the raw XML.
pub(crate) fn task_result_value(xml: &str) -> String {
    let mut s = xml.trim();
    for (open, close) in [("<value>", "</value>"), ("<string>", "</string>")] {
        if let Some(inner) = s.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
            s = inner.trim();
        }
    }
    if s.starts_with('<') {
        return xml.to_owned();
    }
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// The changed-block bitmap of `VDI.list_changed_blocks`: one bit per 64 KiB
/// block of the virtual disk, most significant bit first within each byte
/// (block *i* is byte `i / 8`, mask `0x80 >> (i % 8)`; inferred from the SM
/// code, as the reference notes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedBlocks {
    bitmap: Vec<u8>,
}

impl ChangedBlocks {
    /// The size of a tracked block.
    pub const BLOCK: u64 = 64 << 10;

    /// Decodes XAPI's base64 text (whitespace allowed, padding optional).
    ///
    /// # Errors
    /// [`Error::BadReply`] when it is not base64.
    pub fn from_base64(text: &str) -> Result<ChangedBlocks> {
        let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let bitmap = base64::engine::general_purpose::STANDARD
            .decode(clean.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(clean.trim_end_matches('=')))
            .map_err(|e| Error::BadReply {
                method: "VDI.list_changed_blocks".into(),
                reason: format!("bitmap is not base64: {e}"),
            })?;
        Ok(ChangedBlocks { bitmap })
    }

    /// From raw bitmap bytes.
    pub fn from_bitmap(bitmap: Vec<u8>) -> ChangedBlocks {
        ChangedBlocks { bitmap }
    }

    /// The bitmap bytes.
    pub fn bitmap(&self) -> &[u8] {
        &self.bitmap
    }

    /// Whether block `i` changed.
    pub fn is_changed(&self, i: u64) -> bool {
        usize::try_from(i / 8).ok().and_then(|b| self.bitmap.get(b)).is_some_and(|byte| byte & (0x80 >> (i % 8)) != 0)
    }

    /// How many blocks changed (bits set), within the first `virtual_size` bytes.
    pub fn count(&self, virtual_size: u64) -> u64 {
        self.ranges(virtual_size).iter().map(|r| r.end.div_ceil(Self::BLOCK) - r.start / Self::BLOCK).sum()
    }

    /// The changed byte ranges: adjacent changed blocks merged, the last
    /// clamped to `virtual_size`; bits past the disk's end are ignored.
    pub fn ranges(&self, virtual_size: u64) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for (byte_i, &byte) in self.bitmap.iter().enumerate() {
            if byte == 0 {
                continue;
            }
            for bit in 0..8u64 {
                if byte & (0x80 >> bit) == 0 {
                    continue;
                }
                let start = (byte_i as u64 * 8 + bit) * Self::BLOCK;
                if start >= virtual_size {
                    return out;
                }
                let end = (start + Self::BLOCK).min(virtual_size);
                match out.last_mut() {
                    Some(last) if last.end == start => last.end = end,
                    _ => out.push(start..end),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_in_every_shape() {
        let ok = decode_reply("m", br#"{"jsonrpc":"2.0","result":"OpaqueRef:1","id":1}"#).unwrap();
        assert_eq!(ok, Ok(json!("OpaqueRef:1")));
        let v2 =
            br#"{"jsonrpc":"2.0","error":{"code":1,"message":"HANDLE_INVALID","data":["VM","OpaqueRef:x"]},"id":2}"#;
        let f = decode_reply("VM.get_record", v2).unwrap().unwrap_err();
        assert_eq!(f.code, "HANDLE_INVALID");
        assert_eq!(f.params, ["VM", "OpaqueRef:x"]);
        let v1 = br#"{"result":null,"error":["SESSION_INVALID","OpaqueRef:s"],"id":3}"#;
        let f = decode_reply("m", v1).unwrap().unwrap_err();
        assert_eq!((f.code.as_str(), f.params.as_slice()), ("SESSION_INVALID", &["OpaqueRef:s".to_string()][..]));
        let old = br#"{"Status":"Failure","ErrorDescription":["VM_BAD_POWER_STATE","OpaqueRef:v","halted","running"]}"#;
        let f = decode_reply("m", old).unwrap().unwrap_err();
        assert_eq!(f.params.len(), 3);
        let old_ok = br#"{"Status":"Success","Value":["a"]}"#;
        assert_eq!(decode_reply("m", old_ok).unwrap(), Ok(json!(["a"])));
        // Non-string parameters are kept as JSON text.
        let f = decode_reply("m", br#"{"error":{"message":"X","data":[1,true]}}"#).unwrap().unwrap_err();
        assert_eq!(f.params, ["1", "true"]);
        // Void is "".
        assert_eq!(decode_reply("m", br#"{"result":"","id":1}"#).unwrap(), Ok(json!("")));
        let e = decode_reply("m", b"<html>500 Internal</html>").unwrap_err().to_string();
        assert!(e.contains("not JSON") && e.contains("<html>"), "{e}");
        assert!(decode_reply("m", br#"{"id":1}"#).unwrap_err().to_string().contains("neither result nor error"));
        assert!(decode_reply("m", br#"{"error":[]}"#).is_err());
    }

    #[test]
    fn task_results_unwrap_xml_rpc_values() {
        assert_eq!(task_result_value("<value>OpaqueRef:abc</value>"), "OpaqueRef:abc");
        assert_eq!(task_result_value(" <value><string>a&amp;b&lt;</string></value>\n"), "a&b<");
        assert_eq!(task_result_value(""), "");
        assert_eq!(task_result_value("<value><array><data/></array></value>"), "<value><array><data/></array></value>");
    }

    #[test]
    fn changed_blocks_are_msb_first_and_merged() {
        // Blocks 0, 1, 7, 8 and 23 changed.
        let cb = ChangedBlocks::from_bitmap(vec![0b1100_0001, 0b1000_0000, 0b0000_0001]);
        let b = ChangedBlocks::BLOCK;
        assert_eq!(cb.ranges(1 << 30), vec![0..2 * b, 7 * b..9 * b, 23 * b..24 * b]);
        assert!(cb.is_changed(7) && !cb.is_changed(2) && !cb.is_changed(1000));
        assert_eq!(cb.count(1 << 30), 5);
        // The disk ends inside block 23: clamped; a disk of 8 blocks drops the rest.
        assert_eq!(cb.ranges(23 * b + 100).last(), Some(&(23 * b..23 * b + 100)));
        assert_eq!(cb.ranges(8 * b), vec![0..2 * b, 7 * b..8 * b]);
        let text = base64::engine::general_purpose::STANDARD.encode([0b1100_0001u8, 0b1000_0000, 1]);
        assert_eq!(ChangedBlocks::from_base64(&format!(" {text}\n")).unwrap(), cb);
        assert_eq!(ChangedBlocks::from_base64("").unwrap().ranges(1 << 20), vec![]);
        assert!(ChangedBlocks::from_base64("!!!").is_err());
    }
}
