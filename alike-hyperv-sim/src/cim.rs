//! CIM instances as the simulator serves them: typed property values,
//! endpoint references, the class hierarchy it knows, and their WS-Man XML
//! (what WinRM's WMI plug-in writes for an instance).

use std::fmt::Write as _;

use crate::xml::esc;

/// The WMI namespace's resource URI prefix.
pub(crate) const V2: &str = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/";
/// WS-Addressing.
pub(crate) const ADDRESSING: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
/// WS-Management.
pub(crate) const WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
/// The anonymous address of every EPR WinRM hands out.
pub(crate) const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
const CIM_COMMON: &str = "http://schemas.dmtf.org/wbem/wscim/1/common";

/// A property value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Str(String),
    Num(i128),
    Bool(bool),
    /// A `cim:Datetime` (ISO 8601 text).
    DateTime(String),
    Array(Vec<Value>),
}

impl Value {
    pub(crate) fn s(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }
    pub(crate) fn n(n: impl Into<i128>) -> Value {
        Value::Num(n.into())
    }
    pub(crate) fn strs<S: AsRef<str>>(v: &[S]) -> Value {
        Value::Array(v.iter().map(|s| Value::s(s.as_ref())).collect())
    }
    /// The value as WQL compares it: text for scalars, `None` otherwise.
    pub(crate) fn as_text(&self) -> Option<String> {
        match self {
            Value::Str(s) | Value::DateTime(s) => Some(s.clone()),
            Value::Num(n) => Some(n.to_string()),
            Value::Bool(b) => Some(if *b { "TRUE".into() } else { "FALSE".into() }),
            _ => None,
        }
    }
}

/// An endpoint reference: a class and its key values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Epr {
    pub(crate) class: String,
    pub(crate) keys: Vec<(String, String)>,
}

impl Epr {
    /// Whether `other` names this instance: same class (or `other` names no
    /// class) and every key `other` gives equal, ignoring ASCII case as WMI
    /// does for string keys.
    pub(crate) fn matches(&self, other: &Epr) -> bool {
        (other.class.is_empty() || other.class.eq_ignore_ascii_case(&self.class))
            && !other.keys.is_empty()
            && other
                .keys
                .iter()
                .all(|(k, v)| self.keys.iter().any(|(k2, v2)| k2.eq_ignore_ascii_case(k) && v2.eq_ignore_ascii_case(v)))
    }

    /// The WMI object path (`__PATH`) of the instance on `host`.
    pub(crate) fn wmi_path(&self, host: &str) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        format!("\\\\{host}\\root\\virtualization\\v2:{}.{}", self.class, keys.join(","))
    }

    /// The EPR's XML inside an element `tag` (prefixes `a`, `w` declared on it).
    pub(crate) fn write(&self, out: &mut String, tag: &str) {
        let _ = write!(
            out,
            "<{tag} xmlns:a=\"{ADDRESSING}\" xmlns:w=\"{WSMAN}\"><a:Address>{ANONYMOUS}</a:Address><a:ReferenceParameters><w:ResourceURI>{V2}{}</w:ResourceURI><w:SelectorSet>",
            esc(&self.class)
        );
        for (k, v) in &self.keys {
            let _ = write!(out, "<w:Selector Name=\"{}\">{}</w:Selector>", esc(k), esc(v));
        }
        let _ = write!(out, "</w:SelectorSet></a:ReferenceParameters></{tag}>");
    }
}

/// The key properties of a class.
pub(crate) fn key_names(class: &str) -> &'static [&'static str] {
    match class {
        "Msvm_ComputerSystem" | "Msvm_VirtualEthernetSwitch" => &["CreationClassName", "Name"],
        c if c.ends_with("Service") => &["CreationClassName", "Name", "SystemCreationClassName", "SystemName"],
        _ => &["InstanceID"],
    }
}

/// A class's parent, for the classes served (WMI's `__SUPERCLASS`).
fn superclass(class: &str) -> Option<&'static str> {
    Some(match class {
        "Msvm_ComputerSystem" => "CIM_ComputerSystem",
        "CIM_ComputerSystem" => "CIM_System",
        "Msvm_VirtualSystemSettingData" => "CIM_VirtualSystemSettingData",
        "CIM_VirtualSystemSettingData" => "CIM_SettingData",
        "Msvm_StorageAllocationSettingData" => "CIM_StorageAllocationSettingData",
        "CIM_StorageAllocationSettingData" => "CIM_ResourceAllocationSettingData",
        "Msvm_ResourceAllocationSettingData" => "CIM_ResourceAllocationSettingData",
        "Msvm_ProcessorSettingData" => "CIM_ProcessorAllocationSettingData",
        "CIM_ProcessorAllocationSettingData" => "CIM_ResourceAllocationSettingData",
        "Msvm_MemorySettingData" => "CIM_MemorySettingData",
        "CIM_MemorySettingData" => "CIM_ResourceAllocationSettingData",
        "Msvm_SyntheticEthernetPortSettingData" => "Msvm_EthernetPortSettingData",
        "Msvm_EthernetPortSettingData" => "CIM_ResourceAllocationSettingData",
        "Msvm_EthernetPortAllocationSettingData" => "CIM_EthernetPortAllocationSettingData",
        "CIM_EthernetPortAllocationSettingData" => "CIM_ResourceAllocationSettingData",
        "CIM_ResourceAllocationSettingData" => "CIM_SettingData",
        "Msvm_ConcreteJob" | "Msvm_StorageJob" => "CIM_ConcreteJob",
        "CIM_ConcreteJob" => "CIM_Job",
        "Msvm_VirtualSystemReferencePoint" => "CIM_SettingData",
        "Msvm_VirtualEthernetSwitch" => "CIM_VirtualEthernetSwitch",
        "Msvm_VirtualSystemManagementService" => "CIM_VirtualSystemManagementService",
        "Msvm_VirtualSystemSnapshotService" => "CIM_VirtualSystemSnapshotService",
        "Msvm_ImageManagementService" => "CIM_Service",
        "Msvm_VirtualSystemReferencePointService" => "CIM_Service",
        "Msvm_ReplicationService" => "CIM_Service",
        "Msvm_ReplicationServiceSettingData" | "Msvm_ReplicationAuthorizationSettingData" => "CIM_SettingData",
        _ => return None,
    })
}

/// Whether `class` is `base` or derives from it (case-insensitive, as WQL).
pub(crate) fn is_a(class: &str, base: &str) -> bool {
    let mut c = Some(class);
    let mut steps = 0;
    while let Some(x) = c {
        if x.eq_ignore_ascii_case(base) {
            return true;
        }
        steps += 1;
        if steps > 16 {
            break;
        }
        c = superclass(x);
    }
    false
}

/// Whether the simulator knows the class at all (for `WBEM_E_INVALID_CLASS`).
pub(crate) fn known_class(class: &str) -> bool {
    superclass(class).is_some()
        || [
            "CIM_System",
            "CIM_SettingData",
            "CIM_Job",
            "CIM_Service",
            "CIM_VirtualEthernetSwitch",
            "CIM_VirtualSystemManagementService",
            "CIM_VirtualSystemSnapshotService",
        ]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(class))
}

/// An instance: class and properties in no particular order (written sorted by name, as WMI enumerates them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instance {
    pub(crate) class: String,
    pub(crate) props: Vec<(String, Value)>,
}

impl Instance {
    pub(crate) fn new(class: &str) -> Instance {
        Instance { class: class.to_owned(), props: Vec::new() }
    }

    /// Adds a property.
    #[must_use]
    pub(crate) fn with(mut self, name: &str, v: Value) -> Instance {
        self.props.push((name.to_owned(), v));
        self
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.props.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The instance's EPR (its class's keys).
    pub(crate) fn epr(&self) -> Epr {
        let keys = key_names(&self.class)
            .iter()
            .map(|k| ((*k).to_owned(), self.get(k).and_then(Value::as_text).unwrap_or_default()))
            .collect();
        Epr { class: self.class.clone(), keys }
    }

    /// WS-Man XML of the instance (`p:Class` with `p` the class's resource URI).
    pub(crate) fn write(&self, out: &mut String, select: Option<&[String]>) {
        let c = esc(&self.class);
        let _ = write!(
            out,
            "<p:{c} xmlns:p=\"{V2}{c}\" xmlns:cim=\"{CIM_COMMON}\" xmlns:xsi=\"{XSI}\" xsi:type=\"p:{c}_Type\">"
        );
        let mut props: Vec<&(String, Value)> = self
            .props
            .iter()
            .filter(|(n, _)| select.is_none_or(|s| s.iter().any(|x| x.eq_ignore_ascii_case(n))))
            .collect();
        props.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, v) in props {
            write_prop(out, &format!("p:{}", esc(name)), v);
        }
        let _ = write!(out, "</p:{c}>");
    }
}

fn write_prop(out: &mut String, tag: &str, v: &Value) {
    match v {
        Value::Null => {
            let _ = write!(out, "<{tag} xsi:nil=\"true\"/>");
        }
        Value::Str(s) => {
            let _ = write!(out, "<{tag}>{}</{tag}>", esc(s));
        }
        Value::Num(n) => {
            let _ = write!(out, "<{tag}>{n}</{tag}>");
        }
        Value::Bool(b) => {
            let _ = write!(out, "<{tag}>{}</{tag}>", if *b { "true" } else { "false" });
        }
        Value::DateTime(d) => {
            let _ = write!(out, "<{tag}><cim:Datetime>{}</cim:Datetime></{tag}>", esc(d));
        }
        Value::Array(items) if items.is_empty() => {
            let _ = write!(out, "<{tag} xsi:nil=\"true\"/>");
        }
        Value::Array(items) => {
            for i in items {
                write_prop(out, tag, i);
            }
        }
    }
}

/// An embedded instance as WMI's `GetText(CIM-DTD 2.0)` writes it (what a
/// client passes in string parameters such as `SnapshotSettings`).
pub(crate) fn embedded(i: &Instance) -> String {
    let mut out = format!("<INSTANCE CLASSNAME=\"{}\">", esc(&i.class));
    for (name, v) in &i.props {
        let (ty, vals): (&str, Vec<String>) = match v {
            Value::Str(s) => ("string", vec![s.clone()]),
            Value::Num(n) => ("uint64", vec![n.to_string()]),
            Value::Bool(b) => ("boolean", vec![b.to_string().to_uppercase()]),
            Value::DateTime(d) => ("datetime", vec![d.clone()]),
            Value::Array(a) => ("string", a.iter().filter_map(Value::as_text).collect()),
            Value::Null => ("string", vec![]),
        };
        if matches!(v, Value::Array(_)) {
            let _ = write!(out, "<PROPERTY.ARRAY NAME=\"{}\" TYPE=\"{ty}\"><VALUE.ARRAY>", esc(name));
            for x in vals {
                let _ = write!(out, "<VALUE>{}</VALUE>", esc(&x));
            }
            out.push_str("</VALUE.ARRAY></PROPERTY.ARRAY>");
        } else {
            let _ = write!(out, "<PROPERTY NAME=\"{}\" TYPE=\"{ty}\">", esc(name));
            for x in vals {
                let _ = write!(out, "<VALUE>{}</VALUE>", esc(&x));
            }
            out.push_str("</PROPERTY>");
        }
    }
    out.push_str("</INSTANCE>");
    out
}

/// A property of an embedded instance: its name and its values as text.
pub(crate) type EmbeddedProp = (String, Vec<String>);

/// Reads an embedded instance (CIM-XML `INSTANCE`): class name and the
/// scalar properties as text (arrays as their values).
pub(crate) fn parse_embedded(text: &str) -> Option<(String, Vec<EmbeddedProp>)> {
    let el = crate::xml::parse(text).ok()?;
    if el.name != "INSTANCE" {
        return None;
    }
    let class = el.attr("CLASSNAME")?.to_owned();
    let mut props = Vec::new();
    for p in &el.children {
        let Some(name) = p.attr("NAME") else { continue };
        let vals: Vec<String> = match p.name.as_str() {
            "PROPERTY" => p.child_local("VALUE").map(|v| vec![v.text.clone()]).unwrap_or_default(),
            "PROPERTY.ARRAY" => p
                .child_local("VALUE.ARRAY")
                .map(|a| a.children.iter().map(|v| v.text.clone()).collect())
                .unwrap_or_default(),
            _ => continue,
        };
        props.push((name.to_owned(), vals));
    }
    Some((class, props))
}

/// A CIM datetime (ISO 8601, UTC) for seconds since the Unix epoch.
pub(crate) fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_hierarchy_and_embedded_round_trip() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert!(is_a("Msvm_StorageAllocationSettingData", "CIM_ResourceAllocationSettingData"));
        assert!(is_a("Msvm_ConcreteJob", "cim_job"));
        assert!(!is_a("Msvm_ResourceAllocationSettingData", "Msvm_StorageAllocationSettingData"));
        let i = Instance::new("Msvm_VirtualSystemSnapshotSettingData")
            .with("ConsistencyLevel", Value::n(1))
            .with("ElementName", Value::s("a<b"));
        let (c, props) = parse_embedded(&embedded(&i)).unwrap();
        assert_eq!(c, "Msvm_VirtualSystemSnapshotSettingData");
        assert_eq!(props[0], ("ConsistencyLevel".into(), vec!["1".into()]));
        assert_eq!(props[1], ("ElementName".into(), vec!["a<b".into()]));
    }
}
