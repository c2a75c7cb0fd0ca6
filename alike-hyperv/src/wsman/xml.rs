//! Reading replies: quick-xml's namespace-aware reader into a small tree,
//! bounded in depth and total elements; and the escaping every value we
//! write goes through.

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

const MAX_DEPTH: usize = 48;
const MAX_NODES: usize = 200_000;

/// An element of a reply.
#[derive(Debug, Clone, Default)]
pub(crate) struct Node {
    pub(crate) ns: String,
    pub(crate) local: String,
    pub(crate) attrs: Vec<(String, String, String)>,
    pub(crate) kids: Vec<Node>,
    pub(crate) text: String,
}

impl Node {
    pub(crate) fn is(&self, ns: &str, local: &str) -> bool {
        self.local == local && self.ns == ns
    }

    pub(crate) fn first(&self, ns: &str, local: &str) -> Option<&Node> {
        self.kids.iter().find(|k| k.is(ns, local))
    }

    pub(crate) fn all<'a>(&'a self, ns: &'a str, local: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.kids.iter().filter(move |k| k.is(ns, local))
    }

    /// An attribute by namespace and local name (`""`: no namespace).
    pub(crate) fn attr(&self, ns: &str, local: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, l, _)| n == ns && l == local).map(|(_, _, v)| v.as_str())
    }

    pub(crate) fn trimmed(&self) -> &str {
        self.text.trim()
    }
}

fn ns_string(r: &ResolveResult<'_>) -> String {
    match r {
        ResolveResult::Bound(n) => String::from_utf8_lossy(n.as_ref()).into_owned(),
        _ => String::new(),
    }
}

/// Parses `doc`; any malformation is an error naming it.
pub(crate) fn parse(doc: &str) -> Result<Node, String> {
    let mut rd = NsReader::from_str(doc);
    let mut stack: Vec<Node> = Vec::new();
    let mut done: Option<Node> = None;
    let mut nodes = 0usize;
    loop {
        let (res, ev) = rd.read_resolved_event().map_err(|e| e.to_string())?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                nodes += 1;
                if done.is_some() || stack.len() >= MAX_DEPTH || nodes > MAX_NODES {
                    return Err("too deep, too large, or a second root element".into());
                }
                let mut n = Node {
                    ns: ns_string(&res),
                    local: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Node::default()
                };
                for a in e.attributes() {
                    let a = a.map_err(|e| e.to_string())?;
                    let (ans, local) = rd.resolver().resolve_attribute(a.key);
                    let v = a.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(|e| e.to_string())?;
                    n.attrs.push((
                        ns_string(&ans),
                        String::from_utf8_lossy(local.as_ref()).into_owned(),
                        v.into_owned(),
                    ));
                }
                if matches!(ev, Event::Start(_)) {
                    stack.push(n);
                } else if let Some(p) = stack.last_mut() {
                    p.kids.push(n);
                } else {
                    done = Some(n);
                }
            }
            Event::End(_) => {
                let n = stack.pop().ok_or("an end tag without a start")?;
                match stack.last_mut() {
                    Some(p) => p.kids.push(n),
                    None => done = Some(n),
                }
            }
            Event::Text(t) => {
                let s = t.xml10_content().map_err(|e| e.to_string())?;
                match stack.last_mut() {
                    Some(p) => p.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err("text outside the root element".into()),
                }
            }
            Event::CData(t) => {
                if let Some(p) = stack.last_mut() {
                    p.text.push_str(&t.decode().map_err(|e| e.to_string())?);
                }
            }
            Event::GeneralRef(r) => {
                let s = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| e.to_string())?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("unknown entity &{name};"))?
                            .to_owned()
                    }
                };
                if let Some(p) = stack.last_mut() {
                    p.text.push_str(&s);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err("the document ends inside an element".into());
    }
    done.ok_or_else(|| "no element".into())
}

/// Escapes a value for XML text or a double-quoted attribute.
pub(crate) fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}
