//! WS-Management messages, sans I/O: request envelopes built as text with
//! every value escaped, and total decoders of replies (faults included)
//! into [`Instance`]s, pages of an enumeration and method outputs.
//!
//! Message shapes follow DSP0226 (WS-Management), DSP0227 (the WS-Man CIM
//! binding) and MS-WSMV (Windows' profile): SOAP 1.2, WS-Addressing 2004/08,
//! WS-Enumeration and WS-Transfer 2004/09, WMI methods invoked with the
//! action `<resource URI>/<Method>` and `<Method>_INPUT`.

use std::fmt::Write as _;

use super::xml::{Node, escape, parse};

/// SOAP 1.2.
pub const SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
/// WS-Addressing (2004/08).
pub const ADDRESSING: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
/// WS-Management.
pub const WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
/// WS-Enumeration.
pub const ENUMERATION: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";
/// WS-Transfer.
pub const TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer";
/// The WS-Man CIM binding (association filters).
pub const CIMBINDING: &str = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd";
/// Windows' WMI resource URIs of `root\virtualization\v2` start so.
pub const V2: &str = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/";
const IDENTITY: &str = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd";
const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";
const WQL: &str = "http://schemas.microsoft.com/wbem/wsman/1/WQL";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
const CIM_COMMON: &str = "http://schemas.dmtf.org/wbem/wscim/1/common";
const FAULT_DETAIL: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault";
const WMI_ERROR: &str = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError";

/// A reference to an instance: its resource URI and selector set (its keys).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Epr {
    /// The class's resource URI.
    pub resource_uri: String,
    /// Key name and value, in the order given.
    pub selectors: Vec<(String, String)>,
}

impl Epr {
    /// A reference to an instance of `class` in `root\virtualization\v2`.
    pub fn v2(class: &str) -> Epr {
        Epr { resource_uri: format!("{V2}{class}"), selectors: Vec::new() }
    }

    /// Adds a selector.
    #[must_use]
    pub fn key(mut self, name: &str, value: &str) -> Epr {
        self.selectors.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The class (the resource URI's last segment).
    pub fn class(&self) -> &str {
        self.resource_uri.rsplit('/').next().unwrap_or_default()
    }

    /// A selector's value.
    pub fn selector(&self, name: &str) -> Option<&str> {
        self.selectors.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The WMI object path of the instance (`Class.Key="v",…`), as WQL's
    /// `ASSOCIATORS OF {…}` takes it (backslashes and quotes escaped).
    pub fn object_path(&self) -> String {
        let keys: Vec<String> = self
            .selectors
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        format!("{}.{}", self.class(), keys.join(","))
    }

    fn write(&self, out: &mut String) {
        let _ = write!(
            out,
            "<a:Address>{ANONYMOUS}</a:Address><a:ReferenceParameters><w:ResourceURI>{}</w:ResourceURI><w:SelectorSet>",
            escape(&self.resource_uri)
        );
        for (k, v) in &self.selectors {
            let _ = write!(out, "<w:Selector Name=\"{}\">{}</w:Selector>", escape(k), escape(v));
        }
        out.push_str("</w:SelectorSet></a:ReferenceParameters>");
    }
}

/// A property value of a returned instance or method output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Value {
    /// `xsi:nil`.
    Null,
    /// A scalar, as text (numbers and booleans too).
    Text(String),
    /// A `cim:Datetime` (or `cim:Interval`).
    Datetime(String),
    /// An endpoint reference.
    Ref(Epr),
    /// A repeated property (an array).
    Array(Vec<Value>),
}

impl Value {
    /// The text of a scalar (`Text` or `Datetime`).
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Datetime(s) => Some(s),
            _ => None,
        }
    }
}

/// An instance as WinRM returned it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    /// The class (the element's local name).
    pub class: String,
    /// Properties in the order received; repeated elements are one `Array`.
    pub props: Vec<(String, Value)>,
    /// Its reference, when the enumeration asked for it.
    pub epr: Option<Epr>,
}

impl Instance {
    /// A property.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.props.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// A scalar property's text.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_text)
    }

    /// An integer property.
    pub fn u64(&self, name: &str) -> Option<u64> {
        self.text(name).and_then(|s| s.trim().parse().ok())
    }

    /// The texts of a property that may be an array (one value, or none when null).
    pub fn texts(&self, name: &str) -> Vec<&str> {
        match self.get(name) {
            Some(Value::Array(v)) => v.iter().filter_map(Value::as_text).collect(),
            Some(v) => v.as_text().into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// The references of a property that may be an array.
    pub fn references(&self, name: &str) -> Vec<&Epr> {
        match self.get(name) {
            Some(Value::Array(v)) => v
                .iter()
                .filter_map(|x| match x {
                    Value::Ref(e) => Some(e),
                    _ => None,
                })
                .collect(),
            Some(Value::Ref(e)) => vec![e],
            _ => Vec::new(),
        }
    }

    /// A reference property.
    pub fn reference(&self, name: &str) -> Option<&Epr> {
        match self.get(name) {
            Some(Value::Ref(e)) => Some(e),
            _ => None,
        }
    }
}

/// An embedded instance argument (CIM-XML `INSTANCE`, as WMI's
/// `GetText(CimDtd20)` writes it), e.g. `Msvm_VirtualSystemSnapshotSettingData`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Embedded {
    /// Its class.
    pub class: String,
    /// Properties: name, CIM type (`uint8`, `string`, `boolean`…) and value.
    pub props: Vec<(String, String, String)>,
    /// Array properties (`PROPERTY.ARRAY`): name, CIM type and values.
    pub arrays: Vec<(String, String, Vec<String>)>,
}

impl Embedded {
    /// An embedded instance of `class`.
    pub fn new(class: &str) -> Embedded {
        Embedded { class: class.to_owned(), props: Vec::new(), arrays: Vec::new() }
    }

    /// Adds a property of CIM type `ty`.
    #[must_use]
    pub fn prop(mut self, name: &str, ty: &str, value: &str) -> Embedded {
        self.props.push((name.to_owned(), ty.to_owned(), value.to_owned()));
        self
    }

    /// Adds an array property of CIM type `ty` (`HostResource`, `string[]`).
    #[must_use]
    pub fn prop_array(mut self, name: &str, ty: &str, values: &[String]) -> Embedded {
        self.arrays.push((name.to_owned(), ty.to_owned(), values.to_vec()));
        self
    }

    /// The CIM-XML text (itself escaped again when it becomes an argument).
    pub fn to_cim_xml(&self) -> String {
        let mut s = format!("<INSTANCE CLASSNAME=\"{}\">", escape(&self.class));
        for (n, t, v) in &self.props {
            let _ = write!(
                s,
                "<PROPERTY NAME=\"{}\" TYPE=\"{}\"><VALUE>{}</VALUE></PROPERTY>",
                escape(n),
                escape(t),
                escape(v)
            );
        }
        for (n, t, vs) in &self.arrays {
            let _ = write!(s, "<PROPERTY.ARRAY NAME=\"{}\" TYPE=\"{}\"><VALUE.ARRAY>", escape(n), escape(t));
            for v in vs {
                let _ = write!(s, "<VALUE>{}</VALUE>", escape(v));
            }
            s.push_str("</VALUE.ARRAY></PROPERTY.ARRAY>");
        }
        s.push_str("</INSTANCE>");
        s
    }
}

/// A method argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A scalar (string, number, boolean as `true`/`false`).
    Text(String),
    /// An array of scalars.
    Texts(Vec<String>),
    /// A reference to an instance.
    Ref(Epr),
    /// An embedded instance (sent as its CIM-XML text).
    Embedded(Embedded),
    /// An array of embedded instances (`ResourceSettings`).
    Embeddeds(Vec<Embedded>),
}

/// What a method returned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MethodOutput {
    /// `ReturnValue` (0 done, 4096 a job started, others a failure).
    pub return_value: u32,
    /// The out parameters (as an instance of `<Method>_OUTPUT`).
    pub out: Instance,
}

/// The filter of an enumeration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// A WQL query (resource URI `…/v2/*`).
    Wql(String),
    /// The DMTF association filter: instances associated with `object`.
    Associated {
        /// The instance whose associates are wanted.
        object: Epr,
        /// Through this association class, if given.
        association: Option<String>,
        /// Of this result class, if given.
        result: Option<String>,
    },
}

/// One page of an enumeration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The items of this page.
    pub items: Vec<Instance>,
    /// The context for the next Pull (absent at the end).
    pub context: Option<String>,
    /// Whether the sequence ended.
    pub end: bool,
}

/// What Identify returned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// `ProtocolVersion`.
    pub protocol: String,
    /// `ProductVendor`.
    pub vendor: String,
    /// `ProductVersion`.
    pub version: String,
}

/// A SOAP fault, as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The subcode (e.g. `w:InvalidSelectors`).
    pub subcode: String,
    /// The reason text.
    pub reason: String,
    /// Windows' `WSManFault` code.
    pub wsman_code: Option<u32>,
    /// The WMI error's HRESULT (`MSFT_WmiError/error_Code`).
    pub wmi_code: Option<u32>,
}

/// Why a reply could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decode {
    /// Not XML, not an envelope, or not the reply expected.
    Malformed(String),
    /// A SOAP fault.
    Fault(Fault),
}

fn bad(what: impl Into<String>) -> Decode {
    Decode::Malformed(what.into())
}

/// The header every request carries.
fn header(out: &mut String, to: &str, resource_uri: &str, action: &str, message_id: &str, timeout_secs: u64) {
    let _ = write!(
        out,
        "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:a=\"{ADDRESSING}\" xmlns:w=\"{WSMAN}\" xmlns:n=\"{ENUMERATION}\" xmlns:b=\"{CIMBINDING}\" xmlns:p=\"{}\"><s:Header><a:To>{}</a:To><w:ResourceURI s:mustUnderstand=\"true\">{}</w:ResourceURI><a:ReplyTo><a:Address s:mustUnderstand=\"true\">{ANONYMOUS}</a:Address></a:ReplyTo><a:Action s:mustUnderstand=\"true\">{}</a:Action><w:MaxEnvelopeSize s:mustUnderstand=\"true\">512000</w:MaxEnvelopeSize><a:MessageID>uuid:{}</a:MessageID><w:Locale xml:lang=\"en-US\" s:mustUnderstand=\"false\"/><w:OperationTimeout>PT{timeout_secs}S</w:OperationTimeout>",
        escape(resource_uri),
        escape(to),
        escape(resource_uri),
        escape(action),
        escape(message_id)
    );
}

fn selector_set(out: &mut String, sel: &[(String, String)]) {
    if sel.is_empty() {
        return;
    }
    out.push_str("<w:SelectorSet>");
    for (k, v) in sel {
        let _ = write!(out, "<w:Selector Name=\"{}\">{}</w:Selector>", escape(k), escape(v));
    }
    out.push_str("</w:SelectorSet>");
}

/// The Identify request.
pub fn identify_request() -> String {
    format!(
        "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:i=\"{IDENTITY}\"><s:Header/><s:Body><i:Identify/></s:Body></s:Envelope>"
    )
}

/// An Enumerate request (objects and their EPRs, optimized: the first page
/// comes in the reply).
pub fn enumerate_request(to: &str, filter: &Filter, max_elements: u32, message_id: &str, timeout_secs: u64) -> String {
    let mut s = String::with_capacity(2048);
    header(&mut s, to, &format!("{V2}*"), &format!("{ENUMERATION}/Enumerate"), message_id, timeout_secs);
    let _ = write!(
        s,
        "</s:Header><s:Body><n:Enumerate><w:OptimizeEnumeration/><w:MaxElements>{max_elements}</w:MaxElements><w:EnumerationMode>EnumerateObjectAndEPR</w:EnumerationMode>"
    );
    match filter {
        Filter::Wql(q) => {
            let _ = write!(s, "<w:Filter Dialect=\"{WQL}\">{}</w:Filter>", escape(q));
        }
        Filter::Associated { object, association, result } => {
            s.push_str("<w:Filter Dialect=\"http://schemas.dmtf.org/wbem/wsman/1/cimbinding/associationFilter\"><b:AssociatedInstances><b:Object>");
            object.write(&mut s);
            s.push_str("</b:Object>");
            if let Some(a) = association {
                let _ = write!(s, "<b:AssociationClassName>{}</b:AssociationClassName>", escape(a));
            }
            if let Some(r) = result {
                let _ = write!(s, "<b:ResultClassName>{}</b:ResultClassName>", escape(r));
            }
            s.push_str("</b:AssociatedInstances></w:Filter>");
        }
    }
    s.push_str("</n:Enumerate></s:Body></s:Envelope>");
    s
}

/// A Pull request.
pub fn pull_request(to: &str, context: &str, max_elements: u32, message_id: &str, timeout_secs: u64) -> String {
    let mut s = String::with_capacity(1024);
    header(&mut s, to, &format!("{V2}*"), &format!("{ENUMERATION}/Pull"), message_id, timeout_secs);
    let _ = write!(
        s,
        "</s:Header><s:Body><n:Pull><n:EnumerationContext>{}</n:EnumerationContext><n:MaxElements>{max_elements}</n:MaxElements></n:Pull></s:Body></s:Envelope>",
        escape(context)
    );
    s
}

/// A Get (WS-Transfer) of one instance.
pub fn get_request(to: &str, epr: &Epr, message_id: &str, timeout_secs: u64) -> String {
    let mut s = String::with_capacity(1024);
    header(&mut s, to, &epr.resource_uri, &format!("{TRANSFER}/Get"), message_id, timeout_secs);
    selector_set(&mut s, &epr.selectors);
    s.push_str("</s:Header><s:Body/></s:Envelope>");
    s
}

/// A method invocation on `target`.
pub fn invoke_request(
    to: &str,
    target: &Epr,
    method: &str,
    args: &[(&str, Arg)],
    message_id: &str,
    timeout_secs: u64,
) -> String {
    let mut s = String::with_capacity(2048);
    let action = format!("{}/{method}", target.resource_uri);
    header(&mut s, to, &target.resource_uri, &action, message_id, timeout_secs);
    selector_set(&mut s, &target.selectors);
    let m = escape(method);
    let _ = write!(s, "</s:Header><s:Body><p:{m}_INPUT>");
    for (name, a) in args {
        let n = escape(name);
        match a {
            Arg::Text(v) => {
                let _ = write!(s, "<p:{n}>{}</p:{n}>", escape(v));
            }
            Arg::Texts(vs) => {
                for v in vs {
                    let _ = write!(s, "<p:{n}>{}</p:{n}>", escape(v));
                }
            }
            Arg::Ref(e) => {
                let _ = write!(s, "<p:{n}>");
                e.write(&mut s);
                let _ = write!(s, "</p:{n}>");
            }
            Arg::Embedded(e) => {
                let _ = write!(s, "<p:{n}>{}</p:{n}>", escape(&e.to_cim_xml()));
            }
            Arg::Embeddeds(es) => {
                for e in es {
                    let _ = write!(s, "<p:{n}>{}</p:{n}>", escape(&e.to_cim_xml()));
                }
            }
        }
    }
    let _ = write!(s, "</p:{m}_INPUT></s:Body></s:Envelope>");
    s
}

/// A Release request (ends an enumeration early).
pub fn release_request(to: &str, context: &str, message_id: &str, timeout_secs: u64) -> String {
    let mut s = String::with_capacity(1024);
    header(&mut s, to, &format!("{V2}*"), &format!("{ENUMERATION}/Release"), message_id, timeout_secs);
    let _ = write!(
        s,
        "</s:Header><s:Body><n:Release><n:EnumerationContext>{}</n:EnumerationContext></n:Release></s:Body></s:Envelope>",
        escape(context)
    );
    s
}

/// The body's first element, or the fault it carries.
fn body(doc: &str) -> Result<Node, Decode> {
    let env = parse(doc).map_err(bad)?;
    if !env.is(SOAP, "Envelope") {
        return Err(bad(format!("the reply is a {} element, not a SOAP envelope", env.local)));
    }
    let mut body =
        env.kids.into_iter().find(|k| k.is(SOAP, "Body")).ok_or_else(|| bad("the reply has no SOAP body"))?;
    if body.kids.is_empty() {
        return Ok(Node::default());
    }
    let first = body.kids.swap_remove(0);
    if first.is(SOAP, "Fault") {
        return Err(Decode::Fault(fault(&first)));
    }
    Ok(first)
}

fn fault(f: &Node) -> Fault {
    let code = f.first(SOAP, "Code");
    let subcode = code
        .and_then(|c| c.first(SOAP, "Subcode"))
        .and_then(|s| s.first(SOAP, "Value"))
        .or_else(|| code.and_then(|c| c.first(SOAP, "Value")))
        .map(|v| v.trimmed().to_owned())
        .unwrap_or_default();
    let reason =
        f.first(SOAP, "Reason").and_then(|r| r.first(SOAP, "Text")).map(|t| t.trimmed().to_owned()).unwrap_or_default();
    let detail = f.first(SOAP, "Detail");
    let wsman = detail.and_then(|d| d.first(FAULT_DETAIL, "WSManFault"));
    let wsman_code = wsman.and_then(|w| w.attr("", "Code")).and_then(|c| c.parse().ok());
    let wmi = detail.and_then(|d| d.first(WMI_ERROR, "MSFT_WmiError"));
    let wmi_code = wmi.and_then(|w| w.first(WMI_ERROR, "error_Code")).and_then(|c| c.trimmed().parse().ok());
    let message = wsman
        .and_then(|w| w.first(FAULT_DETAIL, "Message"))
        .map(|m| m.trimmed().to_owned())
        .or_else(|| wmi.and_then(|w| w.first(WMI_ERROR, "Message")).map(|m| m.trimmed().to_owned()))
        .filter(|m| !m.is_empty() && *m != reason);
    let reason = match message {
        Some(m) if reason.is_empty() => m,
        Some(m) => format!("{reason} ({m})"),
        None => reason,
    };
    Fault { subcode, reason, wsman_code, wmi_code }
}

fn epr_of(n: &Node) -> Option<Epr> {
    let rp = n.first(ADDRESSING, "ReferenceParameters")?;
    let uri = rp.first(WSMAN, "ResourceURI")?.trimmed().to_owned();
    let selectors = rp
        .first(WSMAN, "SelectorSet")
        .map(|s| {
            s.all(WSMAN, "Selector")
                .map(|x| (x.attr("", "Name").unwrap_or_default().to_owned(), x.trimmed().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    Some(Epr { resource_uri: uri, selectors })
}

fn value_of(n: &Node) -> Value {
    if n.attr(XSI, "nil").is_some_and(|v| v == "true") {
        return Value::Null;
    }
    if let Some(e) = epr_of(n) {
        return Value::Ref(e);
    }
    if let Some(d) = n.first(CIM_COMMON, "Datetime").or_else(|| n.first(CIM_COMMON, "Interval")) {
        return Value::Datetime(d.trimmed().to_owned());
    }
    Value::Text(n.text.clone())
}

/// An instance element (any class).
fn instance_of(n: &Node) -> Instance {
    let mut props: Vec<(String, Value)> = Vec::new();
    for k in &n.kids {
        let v = value_of(k);
        match props.iter_mut().find(|(name, _)| *name == k.local) {
            Some((_, Value::Array(a))) => a.push(v),
            Some((_, old)) => {
                let first = std::mem::replace(old, Value::Null);
                *old = Value::Array(vec![first, v]);
            }
            None => props.push((k.local.clone(), v)),
        }
    }
    Instance { class: n.local.clone(), props, epr: None }
}

fn items(n: Option<&Node>) -> Vec<Instance> {
    let Some(n) = n else { return Vec::new() };
    n.kids
        .iter()
        .filter_map(|k| {
            if k.is(WSMAN, "Item") {
                let inst = k.kids.iter().find(|x| !x.is(ADDRESSING, "EndpointReference"))?;
                let mut i = instance_of(inst);
                i.epr = k.first(ADDRESSING, "EndpointReference").and_then(epr_of);
                Some(i)
            } else if k.is(ADDRESSING, "EndpointReference") {
                let e = epr_of(k)?;
                Some(Instance { class: e.class().to_owned(), props: Vec::new(), epr: Some(e) })
            } else {
                Some(instance_of(k))
            }
        })
        .collect()
}

/// Decodes an EnumerateResponse.
pub fn decode_enumerate(doc: &str) -> Result<Page, Decode> {
    let b = body(doc)?;
    if !b.is(ENUMERATION, "EnumerateResponse") {
        return Err(bad(format!("expected EnumerateResponse, got {}", b.local)));
    }
    let context = b.first(ENUMERATION, "EnumerationContext").map(|c| c.trimmed().to_owned()).filter(|c| !c.is_empty());
    let end = b.first(WSMAN, "EndOfSequence").is_some();
    let items = items(b.first(WSMAN, "Items"));
    if !end && context.is_none() {
        return Err(bad("an unfinished enumeration without a context"));
    }
    Ok(Page { items, context, end })
}

/// Decodes a PullResponse.
pub fn decode_pull(doc: &str) -> Result<Page, Decode> {
    let b = body(doc)?;
    if !b.is(ENUMERATION, "PullResponse") {
        return Err(bad(format!("expected PullResponse, got {}", b.local)));
    }
    let context = b.first(ENUMERATION, "EnumerationContext").map(|c| c.trimmed().to_owned()).filter(|c| !c.is_empty());
    let end = b.first(ENUMERATION, "EndOfSequence").is_some();
    if !end && context.is_none() {
        return Err(bad("an unfinished enumeration without a context"));
    }
    Ok(Page { items: items(b.first(ENUMERATION, "Items")), context, end })
}

/// Decodes a GetResponse: the instance.
pub fn decode_get(doc: &str) -> Result<Instance, Decode> {
    let b = body(doc)?;
    if b.local.is_empty() {
        return Err(bad("an empty Get reply"));
    }
    Ok(instance_of(&b))
}

/// Decodes a method's reply.
pub fn decode_invoke(doc: &str, method: &str) -> Result<MethodOutput, Decode> {
    let b = body(doc)?;
    if b.local != format!("{method}_OUTPUT") {
        return Err(bad(format!("expected {method}_OUTPUT, got {}", b.local)));
    }
    let out = instance_of(&b);
    let return_value = out
        .text("ReturnValue")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| bad(format!("{method}_OUTPUT has no ReturnValue")))?;
    Ok(MethodOutput { return_value, out })
}

/// Decodes an IdentifyResponse.
pub fn decode_identify(doc: &str) -> Result<Identity, Decode> {
    let b = body(doc)?;
    if !b.is(IDENTITY, "IdentifyResponse") {
        return Err(bad(format!("expected IdentifyResponse, got {}", b.local)));
    }
    let t = |n: &str| b.first(IDENTITY, n).map(|x| x.trimmed().to_owned()).unwrap_or_default();
    Ok(Identity { protocol: t("ProtocolVersion"), vendor: t("ProductVendor"), version: t("ProductVersion") })
}

/// A WQL string literal: `'…'` with `\` and `'` escaped.
pub fn wql_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_escaped() {
        let e = Epr::v2("Msvm_ComputerSystem").key("Name", "a<b>&\"'");
        let req = invoke_request(
            "http://h:5985/wsman",
            &e,
            "M",
            &[
                ("X", Arg::Text("</p:X><evil/>".into())),
                ("S", Arg::Embedded(Embedded::new("C").prop("P", "string", "<&>"))),
            ],
            "id",
            60,
        );
        let doc = parse(&req).unwrap();
        let body = doc.first(SOAP, "Body").unwrap().kids[0].clone();
        assert_eq!(body.kids[0].text, "</p:X><evil/>");
        assert_eq!(
            body.kids[1].text,
            "<INSTANCE CLASSNAME=\"C\"><PROPERTY NAME=\"P\" TYPE=\"string\"><VALUE>&lt;&amp;&gt;</VALUE></PROPERTY></INSTANCE>"
        );
        let sel = doc.first(SOAP, "Header").unwrap().first(WSMAN, "SelectorSet").unwrap();
        assert_eq!(sel.kids[0].text, "a<b>&\"'");
        assert_eq!(wql_quote("it's C:\\x"), "'it\\'s C:\\\\x'");
    }

    #[test]
    fn faults_decode_with_their_codes() {
        let doc = format!(
            "<s:Envelope xmlns:s=\"{SOAP}\"><s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>w:InvalidSelectors</s:Value></s:Subcode></s:Code><s:Reason><s:Text>bad</s:Text></s:Reason><s:Detail><f:WSManFault xmlns:f=\"{FAULT_DETAIL}\" Code=\"2150858843\"><f:Message>more</f:Message></f:WSManFault><p:MSFT_WmiError xmlns:p=\"{WMI_ERROR}\"><p:error_Code>2147749890</p:error_Code></p:MSFT_WmiError></s:Detail></s:Fault></s:Body></s:Envelope>"
        );
        let Err(Decode::Fault(f)) = decode_get(&doc) else { panic!() };
        assert_eq!(f.subcode, "w:InvalidSelectors");
        assert_eq!(f.reason, "bad (more)");
        assert_eq!(f.wsman_code, Some(2_150_858_843));
        assert_eq!(f.wmi_code, Some(0x8004_1002));
    }

    #[test]
    fn instances_arrays_refs_and_nulls() {
        let doc = format!(
            "<s:Envelope xmlns:s=\"{SOAP}\"><s:Body><n:PullResponse xmlns:n=\"{ENUMERATION}\" xmlns:w=\"{WSMAN}\" xmlns:a=\"{ADDRESSING}\"><n:Items><w:Item><p:C xmlns:p=\"{V2}C\" xmlns:xsi=\"{XSI}\"><p:A>1</p:A><p:L>x</p:L><p:L>y</p:L><p:N xsi:nil=\"true\"/><p:R><a:Address>x</a:Address><a:ReferenceParameters><w:ResourceURI>{V2}J</w:ResourceURI><w:SelectorSet><w:Selector Name=\"InstanceID\">7</w:Selector></w:SelectorSet></a:ReferenceParameters></p:R></p:C><a:EndpointReference><a:Address>x</a:Address><a:ReferenceParameters><w:ResourceURI>{V2}C</w:ResourceURI><w:SelectorSet><w:Selector Name=\"K\">v</w:Selector></w:SelectorSet></a:ReferenceParameters></a:EndpointReference></w:Item></n:Items><n:EndOfSequence/></n:PullResponse></s:Body></s:Envelope>"
        );
        let p = decode_pull(&doc).unwrap();
        assert!(p.end);
        let i = &p.items[0];
        assert_eq!(i.u64("A"), Some(1));
        assert_eq!(i.texts("L"), vec!["x", "y"]);
        assert_eq!(i.get("N"), Some(&Value::Null));
        assert_eq!(i.reference("R").unwrap().selector("InstanceID"), Some("7"));
        assert_eq!(i.epr.as_ref().unwrap().selector("K"), Some("v"));
        assert_eq!(i.epr.as_ref().unwrap().object_path(), "C.K=\"v\"");
    }
}
