//! WS-Management over SOAP 1.2, the server's half, as WinRM's WMI plug-in
//! answers: Identify; WS-Enumeration Enumerate/Pull/Release with WQL filters
//! (and the DMTF association filter), EnumerationMode EPR / ObjectAndEPR and
//! OptimizeEnumeration; WS-Transfer Get by selector set; method invocation
//! (the action `<resource URI>/<Method>`, `<Method>_INPUT` in,
//! `<Method>_OUTPUT` out) with EPR and embedded-instance arguments; SOAP
//! faults with a `WSManFault` detail. Its own code: it shares nothing with
//! the client in `alike-hyperv`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use crate::cim::{ADDRESSING, ANONYMOUS, Epr, Instance, V2, WSMAN, is_a, known_class};
use crate::host::{Host, MethodError, new_guid, rc};
use crate::wql::{self, Query};
use crate::xml::{Element, esc, parse};

const SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
const ENUM: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";
const TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer";
const IDENTITY: &str = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd";
const WQL_DIALECT: &str = "http://schemas.microsoft.com/wbem/wsman/1/WQL";
const ASSOC_DIALECT: &str = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding/associationFilter";
const CIMBINDING: &str = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd";
const FAULT_NS: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault";
const WMI_ERROR: &str = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError";

/// Open enumerations are bounded; the oldest is dropped first.
const MAX_ENUMERATIONS: usize = 256;

/// Enumerations in progress: context id → items (XML) not yet pulled.
#[derive(Debug, Default)]
pub(crate) struct Enumerations {
    open: VecDeque<(String, Instant, VecDeque<String>)>,
}

/// A SOAP fault to send.
#[derive(Debug)]
pub(crate) struct Fault {
    sender: bool,
    subcode: &'static str,
    reason: String,
    code: u32,
    wmi: Option<u32>,
}

fn fault(subcode: &'static str, code: u32, reason: impl Into<String>) -> Fault {
    Fault { sender: true, subcode, reason: reason.into(), code, wmi: None }
}

/// WMI said no: `WBEM_E_*` wrapped as WinRM wraps a provider error.
fn wmi_fault(hresult: u32, reason: impl Into<String>) -> Fault {
    Fault { sender: true, subcode: "w:InvalidParameter", reason: reason.into(), code: hresult, wmi: Some(hresult) }
}

const WBEM_E_NOT_FOUND: u32 = 0x8004_1002;
const WBEM_E_INVALID_CLASS: u32 = 0x8004_1010;
const WBEM_E_INVALID_QUERY: u32 = 0x8004_1017;
const WBEM_E_INVALID_METHOD: u32 = 0x8004_1030;
const WBEM_E_INVALID_METHOD_PARAMETERS: u32 = 0x8004_1043;

struct Req<'a> {
    action: String,
    resource_uri: String,
    message_id: String,
    selectors: Vec<(String, String)>,
    body: Option<&'a Element>,
}

fn header_text(h: Option<&Element>, ns: &str, name: &str) -> String {
    h.and_then(|h| h.child(ns, name)).map(|e| e.text().to_owned()).unwrap_or_default()
}

fn selectors(set: Option<&Element>) -> Vec<(String, String)> {
    set.map(|s| {
        s.children
            .iter()
            .filter(|c| c.name == "Selector")
            .map(|c| {
                // A selector may hold an EPR (reference key); its text is empty then.
                (c.attr("Name").unwrap_or_default().to_owned(), c.text().to_owned())
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The class a resource URI names (its last segment).
fn class_of(uri: &str) -> &str {
    uri.rsplit('/').next().unwrap_or_default()
}

/// An EPR parameter (`a:Address` + `a:ReferenceParameters`).
fn parse_epr(e: &Element) -> Option<Epr> {
    let rp = e.child(ADDRESSING, "ReferenceParameters").or_else(|| {
        e.child(ADDRESSING, "EndpointReference").and_then(|x| x.child(ADDRESSING, "ReferenceParameters"))
    })?;
    let uri = rp.child(WSMAN, "ResourceURI")?.text();
    Some(Epr { class: class_of(uri).to_owned(), keys: selectors(rp.child(WSMAN, "SelectorSet")) })
}

/// Handles one SOAP request: (HTTP status, response envelope).
pub(crate) fn handle(host: &Mutex<Host>, enums: &Mutex<Enumerations>, doc: &str) -> (u16, String) {
    let env = match parse(doc) {
        Ok(e) if e.ns == SOAP && e.name == "Envelope" => e,
        Ok(_) => {
            return respond_fault(
                "",
                &fault(
                    "w:SchemaValidationError",
                    2_150_858_817,
                    "The SOAP XML in the message does not match the corresponding XML schema definition.",
                ),
            );
        }
        Err(e) => {
            return respond_fault(
                "",
                &fault(
                    "w:SchemaValidationError",
                    2_150_858_817,
                    format!("The SOAP XML in the message is not well formed: {e}"),
                ),
            );
        }
    };
    let h = env.child(SOAP, "Header");
    let body = env.child(SOAP, "Body").and_then(|b| b.children.first());
    let req = Req {
        action: header_text(h, ADDRESSING, "Action"),
        resource_uri: header_text(h, WSMAN, "ResourceURI"),
        message_id: header_text(h, ADDRESSING, "MessageID"),
        selectors: selectors(h.and_then(|h| h.child(WSMAN, "SelectorSet"))),
        body,
    };
    if req.action.is_empty() && body.is_some_and(|b| b.ns == IDENTITY && b.name == "Identify") {
        return (200, identify());
    }
    let r = match req.action.as_str() {
        a if a == format!("{ENUM}/Enumerate") => enumerate(host, enums, &req),
        a if a == format!("{ENUM}/Pull") => pull(enums, &req),
        a if a == format!("{ENUM}/Release") => release(enums, &req),
        a if a == format!("{TRANSFER}/Get") => get(host, &req),
        a if a.starts_with(V2) && req.resource_uri.starts_with(V2) && a.len() > req.resource_uri.len() => {
            invoke(host, &req)
        }
        a if a.starts_with(&format!("{TRANSFER}/")) => Err(fault(
            "w:ActionNotSupported",
            2_150_858_754,
            "The WS-Management service does not support the specified action for this resource.",
        )),
        _ => Err(fault(
            "a:ActionNotSupported",
            2_150_858_754,
            format!("The action {} is not supported by the service.", req.action),
        )),
    };
    match r {
        Ok((action, body)) => (200, envelope(&action, &req.message_id, &body)),
        Err(f) => respond_fault(&req.message_id, &f),
    }
}

fn envelope(action: &str, relates_to: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<s:Envelope xml:lang=\"en-US\" xmlns:s=\"{SOAP}\" xmlns:a=\"{ADDRESSING}\" xmlns:n=\"{ENUM}\" xmlns:w=\"{WSMAN}\" xmlns:x=\"{TRANSFER}\"><s:Header><a:To>{ANONYMOUS}</a:To><a:Action>{}</a:Action><a:MessageID>uuid:{}</a:MessageID>",
        esc(action),
        new_guid()
    );
    if !relates_to.is_empty() {
        let _ = write!(out, "<a:RelatesTo>{}</a:RelatesTo>", esc(relates_to));
    }
    let _ = write!(out, "</s:Header><s:Body>{body}</s:Body></s:Envelope>");
    out
}

/// The CIM status a WMI error maps to (DSP0200's CIM_ERR_*).
fn cim_status(hresult: u32) -> u32 {
    match hresult {
        WBEM_E_NOT_FOUND => 6,
        WBEM_E_INVALID_CLASS => 5,
        WBEM_E_INVALID_QUERY => 15,
        WBEM_E_INVALID_METHOD => 17,
        _ => 4,
    }
}

fn respond_fault(relates_to: &str, f: &Fault) -> (u16, String) {
    let mut b = String::new();
    let _ = write!(
        b,
        "<s:Fault><s:Code><s:Value>{}</s:Value><s:Subcode><s:Value>{}</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang=\"en-US\">{}</s:Text></s:Reason><s:Detail>",
        if f.sender { "s:Sender" } else { "s:Receiver" },
        f.subcode,
        esc(&f.reason),
    );
    if let Some(h) = f.wmi {
        // A WMI provider's error travels as an MSFT_WmiError instance.
        let _ = write!(
            b,
            "<p:MSFT_WmiError b:IsCIM_Error=\"true\" xmlns:b=\"{WSMAN}\" xmlns:p=\"{WMI_ERROR}\" xmlns:cim=\"http://schemas.dmtf.org/wbem/wscim/1/common\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"p:MSFT_WmiError_Type\"><p:CIMStatusCode>{}</p:CIMStatusCode><p:Message>{}</p:Message><p:MessageID>HRESULT 0x{h:08x}</p:MessageID><p:error_Category>0</p:error_Category><p:error_Code>{h}</p:error_Code><p:error_Type>HRESULT</p:error_Type><p:error_WindowsErrorMessage>{}</p:error_WindowsErrorMessage></p:MSFT_WmiError>",
            cim_status(h),
            esc(&f.reason),
            esc(&f.reason)
        );
    } else {
        let _ = write!(
            b,
            "<f:WSManFault xmlns:f=\"{FAULT_NS}\" Code=\"{}\" Machine=\"localhost\"><f:Message>{}</f:Message></f:WSManFault>",
            f.code,
            esc(&f.reason)
        );
    }
    b.push_str("</s:Detail></s:Fault>");
    (500, envelope(&format!("{ADDRESSING}/fault"), relates_to, &b))
}

fn identify() -> String {
    format!(
        "<s:Envelope xmlns:s=\"{SOAP}\" xml:lang=\"en-US\"><s:Header/><s:Body><wsmid:IdentifyResponse xmlns:wsmid=\"{IDENTITY}\"><wsmid:ProtocolVersion>http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd</wsmid:ProtocolVersion><wsmid:ProductVendor>Microsoft Corporation</wsmid:ProductVendor><wsmid:ProductVersion>OS: 10.0.17763 SP: 0.0 Stack: 3.0</wsmid:ProductVersion><wsmid:SecurityProfiles><wsmid:SecurityProfileName>http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/http/spnego-kerberos</wsmid:SecurityProfileName></wsmid:SecurityProfiles></wsmid:IdentifyResponse></s:Body></s:Envelope>"
    )
}

fn host_lock(host: &Mutex<Host>) -> std::sync::MutexGuard<'_, Host> {
    host.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What an enumeration returns.
enum Mode {
    Object,
    Epr,
    ObjectAndEpr,
}

fn item_xml(i: &Instance, mode: &Mode, select: Option<&[String]>) -> String {
    let mut s = String::new();
    match mode {
        Mode::Object => i.write(&mut s, select),
        Mode::Epr => i.epr().write(&mut s, "a:EndpointReference"),
        Mode::ObjectAndEpr => {
            s.push_str("<w:Item>");
            i.write(&mut s, select);
            i.epr().write(&mut s, "a:EndpointReference");
            s.push_str("</w:Item>");
        }
    }
    s
}

fn run_query(host: &Host, q: &Query) -> Result<Vec<Instance>, Fault> {
    match q {
        Query::Select { class, conds, .. } => {
            if !known_class(class) {
                return Err(wmi_fault(WBEM_E_INVALID_CLASS, format!("Invalid class {class}")));
            }
            Ok(host
                .instances()
                .into_iter()
                .filter(|i| is_a(&i.class, class))
                .filter(|i| {
                    conds.iter().all(|c| {
                        let v = i.get(&c.prop).and_then(crate::cim::Value::as_text);
                        let eq = v.is_some_and(|v| v.eq_ignore_ascii_case(&c.value));
                        eq != c.negated
                    })
                })
                .collect())
        }
        Query::Associators { object, assoc_class, result_class, role, result_role } => {
            if !host.instances().iter().any(|i| i.epr().matches(object)) {
                return Err(wmi_fault(WBEM_E_NOT_FOUND, "Not found"));
            }
            Ok(host.associators(
                object,
                assoc_class.as_deref(),
                result_class.as_deref(),
                role.as_deref(),
                result_role.as_deref(),
            ))
        }
    }
}

fn enumerate(host: &Mutex<Host>, enums: &Mutex<Enumerations>, req: &Req<'_>) -> Result<(String, String), Fault> {
    let body = req
        .body
        .filter(|b| b.ns == ENUM && b.name == "Enumerate")
        .ok_or_else(|| fault("w:SchemaValidationError", 2_150_858_817, "The Enumerate body is missing."))?;
    let mode = match body.child(WSMAN, "EnumerationMode").map(Element::text) {
        None => Mode::Object,
        Some("EnumerateEPR") => Mode::Epr,
        Some("EnumerateObjectAndEPR") => Mode::ObjectAndEpr,
        Some(m) => {
            return Err(fault("w:UnsupportedFeature", 2_150_858_783, format!("EnumerationMode {m} is not supported.")));
        }
    };
    let filter = body.child(WSMAN, "Filter");
    let class = class_of(&req.resource_uri).to_owned();
    let (instances, select) = {
        let h = host_lock(host);
        match filter {
            Some(f) if f.attr("Dialect") == Some(WQL_DIALECT) => {
                if class != "*" && !req.resource_uri.starts_with(V2) {
                    return Err(fault(
                        "w:InvalidParameter",
                        2_150_858_778,
                        "A WQL filter needs a resource URI of the namespace.",
                    ));
                }
                let q =
                    wql::parse(f.text()).map_err(|e| wmi_fault(WBEM_E_INVALID_QUERY, format!("Invalid query: {e}")))?;
                let select = match &q {
                    Query::Select { props, .. } => props.clone(),
                    Query::Associators { .. } => None,
                };
                (run_query(&h, &q)?, select)
            }
            Some(f) if f.attr("Dialect") == Some(ASSOC_DIALECT) => {
                let ai = f.child(CIMBINDING, "AssociatedInstances").ok_or_else(|| {
                    fault("w:CannotProcessFilter", 2_150_858_778, "Only AssociatedInstances is supported.")
                })?;
                let obj = ai.child(CIMBINDING, "Object").and_then(parse_epr).ok_or_else(|| {
                    fault("w:CannotProcessFilter", 2_150_858_778, "The association filter names no object.")
                })?;
                let t = |n: &str| ai.child(CIMBINDING, n).map(|e| e.text().to_owned());
                let q = Query::Associators {
                    object: obj,
                    assoc_class: t("AssociationClassName"),
                    result_class: t("ResultClassName"),
                    role: t("Role"),
                    result_role: t("ResultRole"),
                };
                let mut found = run_query(&h, &q)?;
                // The resource URI narrows the result (`*` or a CIM base class keep all).
                if class != "*" {
                    found.retain(|i| is_a(&i.class, &class));
                }
                (found, None)
            }
            Some(f) => {
                return Err(fault(
                    "w:FilterDialectRequestedUnavailable",
                    2_150_858_779,
                    format!("The filter dialect {} is not supported.", f.attr("Dialect").unwrap_or_default()),
                ));
            }
            None => {
                if !known_class(&class) {
                    return Err(wmi_fault(WBEM_E_INVALID_CLASS, format!("Invalid class {class}")));
                }
                (h.instances().into_iter().filter(|i| is_a(&i.class, &class)).collect(), None)
            }
        }
    };
    let mut items: VecDeque<String> = instances.iter().map(|i| item_xml(i, &mode, select.as_deref())).collect();
    let id = format!("uuid:{}", new_guid());
    let mut out = String::from("<n:EnumerateResponse>");
    let _ = write!(out, "<n:EnumerationContext>{id}</n:EnumerationContext>");
    if body.child(WSMAN, "OptimizeEnumeration").is_some() {
        let max = body.child(WSMAN, "MaxElements").and_then(|m| m.text().parse::<usize>().ok()).unwrap_or(1).max(1);
        out.push_str("<w:Items>");
        for _ in 0..max {
            match items.pop_front() {
                Some(i) => out.push_str(&i),
                None => break,
            }
        }
        out.push_str("</w:Items>");
        if items.is_empty() {
            out.push_str("<w:EndOfSequence/>");
        }
    }
    out.push_str("</n:EnumerateResponse>");
    if !items.is_empty() || body.child(WSMAN, "OptimizeEnumeration").is_none() {
        let mut e = enums.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if e.open.len() >= MAX_ENUMERATIONS {
            e.open.pop_front();
        }
        e.open.push_back((id, Instant::now(), items));
    }
    Ok((format!("{ENUM}/EnumerateResponse"), out))
}

fn context(req: &Req<'_>, what: &str) -> Result<String, Fault> {
    req.body
        .filter(|b| b.ns == ENUM && b.name == what)
        .and_then(|b| b.child(ENUM, "EnumerationContext"))
        .map(|c| c.text().to_owned())
        .ok_or_else(|| {
            fault("w:SchemaValidationError", 2_150_858_817, format!("The {what} body has no EnumerationContext."))
        })
}

fn pull(enums: &Mutex<Enumerations>, req: &Req<'_>) -> Result<(String, String), Fault> {
    let ctx = context(req, "Pull")?;
    let max = req
        .body
        .and_then(|b| b.child(ENUM, "MaxElements"))
        .and_then(|m| m.text().parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 32_000);
    let mut e = enums.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pos = e.open.iter().position(|(id, _, _)| *id == ctx).ok_or_else(|| {
        fault(
            "n:InvalidEnumerationContext",
            2_150_858_770,
            "The enumeration context supplied in the message is not valid.",
        )
    })?;
    let mut out = String::from("<n:PullResponse>");
    let items = &mut e.open[pos].2;
    let mut chunk = String::new();
    for _ in 0..max {
        match items.pop_front() {
            Some(i) => chunk.push_str(&i),
            None => break,
        }
    }
    let done = items.is_empty();
    if !done {
        let _ = write!(out, "<n:EnumerationContext>{}</n:EnumerationContext>", esc(&ctx));
    }
    let _ = write!(out, "<n:Items>{chunk}</n:Items>");
    if done {
        out.push_str("<n:EndOfSequence/>");
        e.open.remove(pos);
    }
    out.push_str("</n:PullResponse>");
    Ok((format!("{ENUM}/PullResponse"), out))
}

fn release(enums: &Mutex<Enumerations>, req: &Req<'_>) -> Result<(String, String), Fault> {
    let ctx = context(req, "Release")?;
    let mut e = enums.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    e.open.retain(|(id, _, _)| *id != ctx);
    Ok((format!("{ENUM}/ReleaseResponse"), String::new()))
}

fn target(host: &Host, req: &Req<'_>) -> Result<Instance, Fault> {
    let class = class_of(&req.resource_uri);
    if !req.resource_uri.starts_with(V2) || !known_class(class) {
        return Err(fault(
            "w:DestinationUnreachable",
            2_150_858_770,
            format!("The resource URI {} is not supported.", req.resource_uri),
        ));
    }
    if req.selectors.is_empty() {
        return Err(fault(
            "w:InvalidSelectors",
            2_150_858_843,
            "The WS-Management service cannot process the request because the request contained invalid selectors for the resource.",
        ));
    }
    let want = Epr { class: String::new(), keys: req.selectors.clone() };
    host.instances()
        .into_iter()
        .find(|i| is_a(&i.class, class) && i.epr().matches(&want) && i.epr().keys.len() == req.selectors.len())
        .ok_or_else(|| wmi_fault(WBEM_E_NOT_FOUND, "The WS-Management service cannot process the request. The WMI service or the WMI provider returned an unknown error: HRESULT 0x80041002"))
}

fn get(host: &Mutex<Host>, req: &Req<'_>) -> Result<(String, String), Fault> {
    let h = host_lock(host);
    let i = target(&h, req)?;
    let mut out = String::new();
    i.write(&mut out, None);
    Ok((format!("{TRANSFER}/GetResponse"), out))
}

/// An argument of `<Method>_INPUT`.
fn arg<'a>(input: &'a Element, name: &str) -> Option<&'a Element> {
    input.children.iter().find(|c| c.name == name)
}

fn arg_text(input: &Element, name: &str) -> String {
    arg(input, name).map(|e| e.text.clone()).unwrap_or_default()
}

/// Every value of a repeated (array) argument.
fn arg_texts(input: &Element, name: &str) -> Vec<String> {
    input.children.iter().filter(|c| c.name == name).map(|e| e.text.clone()).collect()
}

fn arg_u64(input: &Element, name: &str) -> Result<u64, Fault> {
    arg(input, name).and_then(|e| e.text().parse().ok()).ok_or_else(|| {
        wmi_fault(WBEM_E_INVALID_METHOD_PARAMETERS, format!("Parameter {name} is missing or not a number"))
    })
}

fn arg_epr(input: &Element, name: &str) -> Result<Epr, Fault> {
    arg(input, name).and_then(parse_epr).ok_or_else(|| {
        wmi_fault(WBEM_E_INVALID_METHOD_PARAMETERS, format!("Parameter {name} is missing or not a reference"))
    })
}

/// One output parameter.
enum Out {
    Ref(Epr),
    Refs(Vec<Epr>),
    Num(u64),
    Nums(Vec<u64>),
}

fn output(class: &str, method: &str, mut params: Vec<(&str, Out)>, rv: u32) -> String {
    let mut s = format!("<p:{method}_OUTPUT xmlns:p=\"{V2}{class}\">");
    params.sort_by(|a, b| a.0.cmp(b.0));
    for (name, v) in &params {
        match v {
            Out::Ref(e) => e.write(&mut s, &format!("p:{name}")),
            Out::Refs(v) => {
                for e in v {
                    e.write(&mut s, &format!("p:{name}"));
                }
            }
            Out::Num(n) => {
                let _ = write!(s, "<p:{name}>{n}</p:{name}>");
            }
            Out::Nums(v) => {
                for n in v {
                    let _ = write!(s, "<p:{name}>{n}</p:{name}>");
                }
            }
        }
    }
    let _ = write!(s, "<p:ReturnValue>{rv}</p:ReturnValue></p:{method}_OUTPUT>");
    s
}

fn invoke(host: &Mutex<Host>, req: &Req<'_>) -> Result<(String, String), Fault> {
    let method = req.action[req.resource_uri.len()..].trim_start_matches('/').to_owned();
    let class = class_of(&req.resource_uri).to_owned();
    let mut h = host_lock(host);
    let this = target(&h, req)?.epr();
    let input = req
        .body
        .filter(|b| b.name == format!("{method}_INPUT"))
        .ok_or_else(|| wmi_fault(WBEM_E_INVALID_METHOD_PARAMETERS, format!("The body is not {method}_INPUT")))?;
    if let Some(err) = h.take_job_failure(&method) {
        let job = h.failed_job(&method, err);
        return Ok((
            format!("{}Response", req.action),
            output(&class, &method, vec![("Job", Out::Ref(job))], rc::JOB_STARTED),
        ));
    }
    let done = |r: Result<Vec<(&'static str, Out)>, MethodError>, rv_ok: u32| match r {
        Ok(p) => Ok(output(&class, &method, p, rv_ok)),
        Err(e) => Ok(output(&class, &method, vec![], e.code)),
    };
    let body = match (class.as_str(), method.as_str()) {
        ("Msvm_VirtualSystemSnapshotService", "CreateSnapshot") => {
            let sys = arg_epr(input, "AffectedSystem")?;
            let kind = arg(input, "SnapshotType").and_then(|e| e.text().parse().ok()).unwrap_or(2);
            let r = h.create_snapshot(&sys, &arg_text(input, "SnapshotSettings"), kind);
            done(r.map(|job| vec![("Job", Out::Ref(job))]), rc::JOB_STARTED)
        }
        ("Msvm_VirtualSystemSnapshotService", "DestroySnapshot") => {
            let s = arg_epr(input, "AffectedSnapshot")?;
            done(h.destroy_snapshot(&s).map(|job| vec![("Job", Out::Ref(job))]), rc::JOB_STARTED)
        }
        ("Msvm_VirtualSystemSnapshotService", "ConvertToReferencePoint") => {
            let s = arg_epr(input, "AffectedSnapshot")?;
            let r = h.convert_to_reference_point(&s);
            done(
                r.map(|(job, rp)| vec![("Job", Out::Ref(job)), ("ResultingReferencePoint", Out::Ref(rp))]),
                rc::JOB_STARTED,
            )
        }
        ("Msvm_VirtualSystemReferencePointService", "DestroyReferencePoint") => {
            let r = arg_epr(input, "AffectedReferencePoint")?;
            done(h.destroy_reference_point(&r).map(|job| vec![("Job", Out::Ref(job))]), rc::JOB_STARTED)
        }
        ("Msvm_ImageManagementService", "GetVirtualDiskChanges") => {
            let path = arg_text(input, "Path");
            let limit = arg_text(input, "LimitId");
            if !arg_text(input, "TargetSnapshotId").trim().is_empty() {
                return Ok((format!("{}Response", req.action), output(&class, &method, vec![], rc::NOT_SUPPORTED)));
            }
            let off = arg_u64(input, "ByteOffset")?;
            let len = arg_u64(input, "ByteLength")?;
            let r = h.virtual_disk_changes(path.trim(), limit.trim(), off, len).map(|(processed, ranges)| {
                vec![
                    ("ProcessedByteLength", Out::Num(processed)),
                    ("ChangedByteOffsets", Out::Nums(ranges.iter().map(|r| r.start).collect())),
                    ("ChangedByteLengths", Out::Nums(ranges.iter().map(|r| r.end - r.start).collect())),
                ]
            });
            done(r, rc::OK)
        }
        ("Msvm_VirtualSystemManagementService", "DefineSystem") => {
            let r = h.define_system(&arg_text(input, "SystemSettings"));
            done(r.map(|(job, vm)| vec![("Job", Out::Ref(job)), ("ResultingSystem", Out::Ref(vm))]), rc::JOB_STARTED)
        }
        ("Msvm_VirtualSystemManagementService", "ModifyResourceSettings") => {
            let r = h.modify_resource_settings(&arg_texts(input, "ResourceSettings"));
            done(
                r.map(|(job, v)| vec![("Job", Out::Ref(job)), ("ResultingResourceSettings", Out::Refs(v))]),
                rc::JOB_STARTED,
            )
        }
        ("Msvm_VirtualSystemManagementService", "AddResourceSettings") => {
            let t = arg_epr(input, "AffectedConfiguration")?;
            let r = h.add_resource_settings(&t, &arg_texts(input, "ResourceSettings"));
            done(
                r.map(|(job, v)| vec![("Job", Out::Ref(job)), ("ResultingResourceSettings", Out::Refs(v))]),
                rc::JOB_STARTED,
            )
        }
        ("Msvm_VirtualSystemManagementService", "DestroySystem") => {
            let t = arg_epr(input, "AffectedSystem")?;
            done(h.destroy_system(&t).map(|job| vec![("Job", Out::Ref(job))]), rc::JOB_STARTED)
        }
        ("Msvm_ReplicationService", "SetAuthorizationEntry") => {
            let t = arg_epr(input, "ComputerSystem")?;
            let r = h.set_authorization_entry(&t, &arg_text(input, "AuthorizationEntry"));
            done(r.map(|job| vec![("Job", Out::Ref(job))]), rc::JOB_STARTED)
        }
        ("Msvm_ReplicationService", "RemoveReplicationRelationship") => {
            let t = arg_epr(input, "ComputerSystem")?;
            done(h.remove_replication_relationship(&t).map(|job| vec![("Job", Out::Ref(job))]), rc::JOB_STARTED)
        }
        ("Msvm_ReplicationService", "InitiateFailover") => {
            let t = arg_epr(input, "ComputerSystem")?;
            done(
                h.needs_recovery_point(&t, "InitiateFailover").map(|job| vec![("Job", Out::Ref(job))]),
                rc::JOB_STARTED,
            )
        }
        ("Msvm_ReplicationService", m @ ("CommitFailover" | "RevertFailover" | "ReverseReplicationRelationship")) => {
            let t = arg_epr(input, "ComputerSystem")?;
            done(h.needs_failover(&t, m).map(|job| vec![("Job", Out::Ref(job))]), rc::JOB_STARTED)
        }
        ("Msvm_ReplicationService", "TestReplicaSystem") => {
            let t = arg_epr(input, "ComputerSystem")?;
            done(
                h.needs_recovery_point(&t, "TestReplicaSystem").map(|job| vec![("Job", Out::Ref(job))]),
                rc::JOB_STARTED,
            )
        }
        ("Msvm_ComputerSystem", "RequestStateChange") => {
            let state = arg_u64(input, "RequestedState")?;
            done(h.request_state_change(&this, state).map(|job| vec![("Job", Out::Ref(job))]), rc::JOB_STARTED)
        }
        _ => return Err(wmi_fault(WBEM_E_INVALID_METHOD, format!("Method {method} of {class} is not supported"))),
    }?;
    Ok((format!("{}Response", req.action), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_gets_a_fault_not_a_panic() {
        let host = Mutex::new(crate::demo::empty_host_for_tests());
        let enums = Mutex::new(Enumerations::default());
        for doc in ["", "<x/>", "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"/>"] {
            let (status, body) = handle(&host, &enums, doc);
            assert_eq!(status, 500, "{doc}");
            assert!(body.contains("s:Fault"), "{body}");
        }
    }
}
