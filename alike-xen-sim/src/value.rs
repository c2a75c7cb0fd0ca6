//! XAPI values and their two wire encodings.
//!
//! [`Value`] is the one data model behind both protocols. The encodings
//! follow XAPI's `wire-protocol.md`:
//!
//! | XAPI type | XML-RPC | JSON-RPC |
//! |---|---|---|
//! | `string`, ref, enum | `<value>text</value>` (no `<string>` tag, as XAPI writes) | string |
//! | `int` (64-bit) | a **string of decimal digits** | number |
//! | `float` | `<double>` | number |
//! | `bool` | `<boolean>0/1</boolean>` | boolean |
//! | `datetime` | `<dateTime.iso8601>` | string |
//! | set | `<array><data>…` | array |
//! | map | `<struct>` | object |
//! | void | empty string | empty string |
//!
//! Decoding is lenient the way XAPI is: an `int` parameter may arrive as a
//! number or as a string of digits ([`Value::as_int`]).
//!
//! The XML-RPC codec is a small hand-written, sans-IO parser over a byte
//! buffer (XML-RPC needs elements, text and the five entities plus numeric
//! character references; no namespaces, no DTDs).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A value on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Value {
    /// A string, reference, uuid or enum value.
    Str(String),
    /// A 64-bit integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A date and time, `YYYYMMDDTHH:MM:SSZ` as XAPI writes it.
    DateTime(String),
    /// A set.
    Array(Vec<Value>),
    /// A map or record.
    Struct(BTreeMap<String, Value>),
}

/// The null reference.
pub const NULL_REF: &str = "OpaqueRef:NULL";

impl Value {
    /// A string value.
    pub fn s(v: impl Into<String>) -> Value {
        Value::Str(v.into())
    }

    /// An empty map.
    pub fn map() -> Value {
        Value::Struct(BTreeMap::new())
    }

    /// A map of strings.
    pub fn string_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
        Value::Struct(pairs.into_iter().map(|(k, v)| (k.to_owned(), Value::s(v))).collect())
    }

    /// An array of strings.
    pub fn strings<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Value {
        Value::Array(items.into_iter().map(|s| Value::s(s.as_ref())).collect())
    }

    /// The string inside, if this is a string (or a datetime).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::DateTime(s) => Some(s),
            _ => None,
        }
    }

    /// The integer inside: an `Int`, or a string of decimal digits (XML-RPC
    /// sends ints that way), or a float without a fraction.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Str(s) => s.trim().parse().ok(),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Some(*f as i64),
            _ => None,
        }
    }

    /// The float inside (ints and numeric strings convert).
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The boolean inside (also `"true"`/`"false"`, `"1"`/`"0"` strings).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Str(s) => match s.as_str() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            },
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }

    /// The items, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The members, if this is a struct.
    pub fn as_struct(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Struct(m) => Some(m),
            _ => None,
        }
    }

    /// The value as XAPI's JSON-RPC writes it.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Str(s) | Value::DateTime(s) => J::String(s.clone()),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Bool(b) => J::Bool(*b),
            Value::Array(a) => J::Array(a.iter().map(Value::to_json).collect()),
            Value::Struct(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// A JSON value as a [`Value`] (null becomes the empty string).
    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::s(""),
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            J::String(s) => Value::Str(s.clone()),
            J::Array(a) => Value::Array(a.iter().map(Value::from_json).collect()),
            J::Object(m) => Value::Struct(m.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect()),
        }
    }

    /// Appends the XML-RPC `<value>` element for this value.
    pub fn write_xml(&self, out: &mut String) {
        out.push_str("<value>");
        match self {
            Value::Str(s) => escape_into(s, out),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) => {
                let _ = write!(out, "<double>{f:?}</double>");
            }
            Value::Bool(b) => {
                let _ = write!(out, "<boolean>{}</boolean>", u8::from(*b));
            }
            Value::DateTime(s) => {
                out.push_str("<dateTime.iso8601>");
                escape_into(s, out);
                out.push_str("</dateTime.iso8601>");
            }
            Value::Array(a) => {
                out.push_str("<array><data>");
                for v in a {
                    v.write_xml(out);
                }
                out.push_str("</data></array>");
            }
            Value::Struct(m) => {
                out.push_str("<struct>");
                for (k, v) in m {
                    out.push_str("<member><name>");
                    escape_into(k, out);
                    out.push_str("</name>");
                    v.write_xml(out);
                    out.push_str("</member>");
                }
                out.push_str("</struct>");
            }
        }
        out.push_str("</value>");
    }

    /// The XML-RPC `<value>` element as a string (what XAPI stores in
    /// `task.result`).
    pub fn to_xml(&self) -> String {
        let mut s = String::new();
        self.write_xml(&mut s);
        s
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::s(s)
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
}

/// Escapes text for an HTML or XML body.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(s, &mut out);
    out
}

/// One token of an XML document.
#[derive(Debug, PartialEq)]
enum Tok {
    Open(String),
    Close(String),
    Empty(String),
    Text(String),
}

/// A tiny XML tokenizer: elements (attributes ignored), text with entities
/// decoded, CDATA; declarations, processing instructions and comments skipped.
struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn next_tok(&mut self) -> Result<Option<Tok>, String> {
        loop {
            let rest = &self.s[self.pos..];
            if rest.is_empty() {
                return Ok(None);
            }
            if let Some(r) = rest.strip_prefix("<?") {
                let end = r.find("?>").ok_or("unterminated processing instruction")?;
                self.pos += 2 + end + 2;
                continue;
            }
            if let Some(r) = rest.strip_prefix("<!--") {
                let end = r.find("-->").ok_or("unterminated comment")?;
                self.pos += 4 + end + 3;
                continue;
            }
            if let Some(r) = rest.strip_prefix("<![CDATA[") {
                let end = r.find("]]>").ok_or("unterminated CDATA")?;
                self.pos += 9 + end + 3;
                return Ok(Some(Tok::Text(r[..end].to_owned())));
            }
            if rest.starts_with("<!") {
                let end = rest.find('>').ok_or("unterminated declaration")?;
                self.pos += end + 1;
                continue;
            }
            if let Some(r) = rest.strip_prefix('<') {
                let end = r.find('>').ok_or("unterminated tag")?;
                let inner = &r[..end];
                self.pos += 1 + end + 1;
                if let Some(name) = inner.strip_prefix('/') {
                    return Ok(Some(Tok::Close(name.trim().to_owned())));
                }
                let (inner, empty) = match inner.strip_suffix('/') {
                    Some(i) => (i, true),
                    None => (inner, false),
                };
                let name = inner.split_whitespace().next().unwrap_or("").to_owned();
                if name.is_empty() {
                    return Err("empty tag name".into());
                }
                return Ok(Some(if empty { Tok::Empty(name) } else { Tok::Open(name) }));
            }
            let end = rest.find('<').unwrap_or(rest.len());
            self.pos += end;
            return Ok(Some(Tok::Text(unescape(&rest[..end])?)));
        }
    }
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let r = &rest[i + 1..];
        let end = r.find(';').ok_or("unterminated entity")?;
        let ent = &r[..end];
        let c = match ent {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(h) = ent.strip_prefix("#x").or_else(|| ent.strip_prefix("#X")) {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = ent.strip_prefix('#') {
                    d.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32).ok_or_else(|| format!("unknown entity &{ent};"))?
            }
        };
        out.push(c);
        rest = &r[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A token stream with one token of look-ahead and whitespace-only text skipped
/// between elements.
struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<Tok>,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Parser<'a> {
        Parser { lex: Lexer { s, pos: 0 }, peeked: None }
    }

    fn raw_next(&mut self) -> Result<Option<Tok>, String> {
        match self.peeked.take() {
            Some(t) => Ok(Some(t)),
            None => self.lex.next_tok(),
        }
    }

    /// Next token that is not whitespace-only text.
    fn next(&mut self) -> Result<Option<Tok>, String> {
        loop {
            match self.raw_next()? {
                Some(Tok::Text(t)) if t.trim().is_empty() => {}
                other => return Ok(other),
            }
        }
    }

    fn peek(&mut self) -> Result<Option<&Tok>, String> {
        if self.peeked.is_none() {
            self.peeked = self.next()?;
        }
        Ok(self.peeked.as_ref())
    }

    fn expect_open(&mut self, name: &str) -> Result<(), String> {
        match self.next()? {
            Some(Tok::Open(n)) if n == name => Ok(()),
            other => Err(format!("expected <{name}>, found {other:?}")),
        }
    }

    fn expect_close(&mut self, name: &str) -> Result<(), String> {
        match self.next()? {
            Some(Tok::Close(n)) if n == name => Ok(()),
            other => Err(format!("expected </{name}>, found {other:?}")),
        }
    }

    /// Text up to the closing tag `name` (which is consumed).
    fn text_until_close(&mut self, name: &str) -> Result<String, String> {
        let mut s = String::new();
        loop {
            match self.raw_next()? {
                Some(Tok::Text(t)) => s.push_str(&t),
                Some(Tok::Close(n)) if n == name => return Ok(s),
                other => return Err(format!("expected text in <{name}>, found {other:?}")),
            }
        }
    }

    /// Parses a `<value>` element (the opening tag not yet read).
    fn value(&mut self) -> Result<Value, String> {
        match self.next()? {
            Some(Tok::Open(n)) if n == "value" => {}
            Some(Tok::Empty(n)) if n == "value" => return Ok(Value::s("")),
            other => return Err(format!("expected <value>, found {other:?}")),
        }
        // Untyped content is a string; it may be empty.
        let mut text = String::new();
        loop {
            match self.raw_next()? {
                Some(Tok::Text(t)) => text.push_str(&t),
                Some(Tok::Close(n)) if n == "value" => return Ok(Value::Str(text)),
                Some(Tok::Empty(n)) => {
                    let v = match n.as_str() {
                        "nil" | "string" => Value::s(""),
                        "struct" => Value::map(),
                        "array" => Value::Array(Vec::new()),
                        other => return Err(format!("unexpected <{other}/>")),
                    };
                    self.expect_close("value")?;
                    return Ok(v);
                }
                Some(Tok::Open(ty)) => {
                    let v = self.typed(&ty)?;
                    self.expect_close("value")?;
                    return Ok(v);
                }
                other => return Err(format!("unexpected {other:?} in <value>")),
            }
        }
    }

    fn typed(&mut self, ty: &str) -> Result<Value, String> {
        Ok(match ty {
            "string" => Value::Str(self.text_until_close(ty)?),
            "int" | "i4" | "i8" => {
                let t = self.text_until_close(ty)?;
                Value::Int(t.trim().parse().map_err(|_| format!("bad <{ty}> {t:?}"))?)
            }
            "boolean" => {
                let t = self.text_until_close(ty)?;
                Value::Bool(match t.trim() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("bad boolean {t:?}")),
                })
            }
            "double" => {
                let t = self.text_until_close(ty)?;
                Value::Float(t.trim().parse().map_err(|_| format!("bad double {t:?}"))?)
            }
            "dateTime.iso8601" => Value::DateTime(self.text_until_close(ty)?),
            "base64" => Value::Str(self.text_until_close(ty)?),
            "nil" => {
                self.text_until_close(ty)?;
                Value::s("")
            }
            "array" => {
                let mut items = Vec::new();
                match self.next()? {
                    Some(Tok::Open(n)) if n == "data" => {
                        while !matches!(self.peek()?, Some(Tok::Close(n)) if n == "data") {
                            items.push(self.value()?);
                        }
                        self.expect_close("data")?;
                    }
                    Some(Tok::Empty(n)) if n == "data" => {}
                    other => return Err(format!("expected <data>, found {other:?}")),
                }
                self.expect_close("array")?;
                Value::Array(items)
            }
            "struct" => {
                let mut m = BTreeMap::new();
                while !matches!(self.peek()?, Some(Tok::Close(n)) if n == "struct") {
                    self.expect_open("member")?;
                    self.expect_open("name")?;
                    let name = self.text_until_close("name")?;
                    let v = self.value()?;
                    self.expect_close("member")?;
                    m.insert(name, v);
                }
                self.expect_close("struct")?;
                Value::Struct(m)
            }
            other => return Err(format!("unknown XML-RPC type <{other}>")),
        })
    }
}

/// Parses an XML-RPC `methodCall` into the method name and its parameters.
///
/// # Errors
/// A description of what is malformed (XAPI answers such a request with an
/// HTTP 500 page naming `Xmlrpc.Parse_error`).
pub fn parse_method_call(body: &[u8]) -> Result<(String, Vec<Value>), String> {
    let s = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut p = Parser::new(s);
    p.expect_open("methodCall")?;
    p.expect_open("methodName")?;
    let name = p.text_until_close("methodName")?.trim().to_owned();
    let mut params = Vec::new();
    match p.next()? {
        Some(Tok::Open(n)) if n == "params" => {
            while !matches!(p.peek()?, Some(Tok::Close(n)) if n == "params") {
                p.expect_open("param")?;
                params.push(p.value()?);
                p.expect_close("param")?;
            }
            p.expect_close("params")?;
            p.expect_close("methodCall")?;
        }
        Some(Tok::Empty(n)) if n == "params" => p.expect_close("methodCall")?,
        // XAPI insists on a params element (see wire-protocol.md's example).
        other => return Err(format!("expected <params>, found {other:?}")),
    }
    Ok((name, params))
}

/// Parses a `methodResponse` (for tests and clients).
///
/// # Errors
/// A description of what is malformed.
pub fn parse_method_response(body: &[u8]) -> Result<Value, String> {
    let s = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut p = Parser::new(s);
    p.expect_open("methodResponse")?;
    p.expect_open("params")?;
    p.expect_open("param")?;
    let v = p.value()?;
    p.expect_close("param")?;
    p.expect_close("params")?;
    p.expect_close("methodResponse")?;
    Ok(v)
}

/// Parses a lone `<value>` element (a `task.result`).
///
/// # Errors
/// A description of what is malformed.
pub fn parse_value(s: &str) -> Result<Value, String> {
    Parser::new(s).value()
}

/// Writes an XML-RPC `methodCall` (for tests and clients).
pub fn method_call(name: &str, params: &[Value]) -> String {
    let mut s = String::from("<?xml version=\"1.0\"?><methodCall><methodName>");
    escape_into(name, &mut s);
    s.push_str("</methodName><params>");
    for p in params {
        s.push_str("<param>");
        p.write_xml(&mut s);
        s.push_str("</param>");
    }
    s.push_str("</params></methodCall>");
    s
}

/// Writes XAPI's XML-RPC reply: a struct with `Status` and `Value` or
/// `ErrorDescription`, wrapped in a `methodResponse`.
pub fn method_response(result: Result<&Value, (&str, &[String])>) -> String {
    let mut m = BTreeMap::new();
    match result {
        Ok(v) => {
            m.insert("Status".to_owned(), Value::s("Success"));
            m.insert("Value".to_owned(), v.clone());
        }
        Err((code, params)) => {
            m.insert("Status".to_owned(), Value::s("Failure"));
            let mut desc = vec![Value::s(code)];
            desc.extend(params.iter().map(|p| Value::s(p.as_str())));
            m.insert("ErrorDescription".to_owned(), Value::Array(desc));
        }
    }
    let mut s = String::from("<?xml version=\"1.0\"?><methodResponse><params><param>");
    Value::Struct(m).write_xml(&mut s);
    s.push_str("</param></params></methodResponse>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_call_with_every_type() {
        let mut rec = BTreeMap::new();
        rec.insert("name_label".to_owned(), Value::s("a <b> & \"c\""));
        rec.insert("virtual_size".to_owned(), Value::Int(10 << 30));
        rec.insert("sharable".to_owned(), Value::Bool(false));
        rec.insert("tags".to_owned(), Value::Array(vec![]));
        rec.insert("other_config".to_owned(), Value::map());
        let params = vec![Value::s("OpaqueRef:1"), Value::Struct(rec), Value::Float(0.5)];
        let xml = method_call("VDI.create", &params);
        let (name, back) = parse_method_call(xml.as_bytes()).unwrap();
        assert_eq!(name, "VDI.create");
        // Ints travel as digit strings, as XAPI does.
        assert_eq!(back[1].as_struct().unwrap()["virtual_size"], Value::s("10737418240"));
        assert_eq!(back[1].as_struct().unwrap()["virtual_size"].as_int(), Some(10 << 30));
        assert_eq!(back[1].as_struct().unwrap()["name_label"], Value::s("a <b> & \"c\""));
        assert_eq!(back[2], Value::Float(0.5));
    }

    #[test]
    fn parses_what_python_xmlrpc_sends() {
        let body = "<?xml version='1.0'?>\n<methodCall>\n<methodName>session.login_with_password</methodName>\n<params>\n<param>\n<value><string>root</string></value>\n</param>\n<param>\n<value><string>pw&amp;</string></value>\n</param>\n<param>\n<value><int>42</int></value>\n</param>\n<param>\n<value><nil/></value></param>\n<param>\n<value><array><data>\n</data></array></value>\n</param>\n</params>\n</methodCall>\n";
        let (name, p) = parse_method_call(body.as_bytes()).unwrap();
        assert_eq!(name, "session.login_with_password");
        assert_eq!(p, vec![Value::s("root"), Value::s("pw&"), Value::Int(42), Value::s(""), Value::Array(vec![])]);
    }

    #[test]
    fn refuses_a_call_without_params() {
        let body = "<?xml version=\"1.0\"?><methodCall><methodName>session.logout</methodName></methodCall>";
        assert!(parse_method_call(body.as_bytes()).is_err());
    }

    #[test]
    fn response_shapes() {
        let ok = method_response(Ok(&Value::s("OpaqueRef:x")));
        assert_eq!(
            parse_method_response(ok.as_bytes()).unwrap(),
            Value::Struct(
                [("Status".to_owned(), Value::s("Success")), ("Value".to_owned(), Value::s("OpaqueRef:x"))].into()
            )
        );
        let err = method_response(Err(("HANDLE_INVALID", &["VM".to_owned(), "OpaqueRef:y".to_owned()])));
        let v = parse_method_response(err.as_bytes()).unwrap();
        assert_eq!(v.as_struct().unwrap()["ErrorDescription"], Value::strings(["HANDLE_INVALID", "VM", "OpaqueRef:y"]));
        assert_eq!(parse_value("<value>OpaqueRef:z</value>").unwrap(), Value::s("OpaqueRef:z"));
    }

    #[test]
    fn json_ints_are_numbers() {
        assert_eq!(Value::Int(5).to_json(), serde_json::json!(5));
        assert_eq!(
            Value::from_json(&serde_json::json!({"a": [1, "x", true]})).to_json(),
            serde_json::json!({"a": [1, "x", true]})
        );
    }
}
