//! A small element tree read with quick-xml (namespaces resolved), and the
//! escaping every value we write goes through.
//!
//! Limits: input is bounded by the HTTP layer (the envelope size), depth by
//! [`MAX_DEPTH`]; DTDs and processing instructions are ignored, unknown
//! entities are an error.

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

/// Elements nest at most this deep.
pub(crate) const MAX_DEPTH: usize = 64;

/// An element: its namespace URI and local name, attributes (namespace,
/// local name, value), child elements and its text (the concatenation of
/// its text and CDATA nodes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub(crate) ns: String,
    pub(crate) name: String,
    pub(crate) attrs: Vec<(String, String, String)>,
    pub(crate) children: Vec<Element>,
    pub(crate) text: String,
}

impl Element {
    /// The first child with this namespace and local name.
    pub(crate) fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name && c.ns == ns)
    }

    /// The first child with this local name, in any namespace.
    pub(crate) fn child_local(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// An attribute by local name (any namespace or none).
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(_, n, _)| n == name).map(|(_, _, v)| v.as_str())
    }

    /// The text, trimmed.
    pub(crate) fn text(&self) -> &str {
        self.text.trim()
    }
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed XML: {0}")]
pub(crate) struct XmlError(pub(crate) String);

fn ns_of(r: &ResolveResult<'_>) -> String {
    match r {
        ResolveResult::Bound(ns) => String::from_utf8_lossy(ns.as_ref()).into_owned(),
        _ => String::new(),
    }
}

/// Parses a document into its root element.
pub(crate) fn parse(doc: &str) -> Result<Element, XmlError> {
    let mut r = NsReader::from_str(doc);
    let err = |e: &dyn std::fmt::Display| XmlError(e.to_string());
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let (res, ev) = r.read_resolved_event().map_err(|e| err(&e))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if root.is_some() {
                    return Err(XmlError("content after the root element".into()));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError(format!("elements nest deeper than {MAX_DEPTH}")));
                }
                let mut el = Element {
                    ns: ns_of(&res),
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Element::default()
                };
                for a in e.attributes() {
                    let a = a.map_err(|e| err(&e))?;
                    let (ans, local) = r.resolver().resolve_attribute(a.key);
                    let v = a.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(|e| err(&e))?.into_owned();
                    el.attrs.push((ns_of(&ans), String::from_utf8_lossy(local.as_ref()).into_owned(), v));
                }
                if matches!(ev, Event::Start(_)) {
                    stack.push(el);
                } else {
                    close(&mut stack, &mut root, el);
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| XmlError("unbalanced end tag".into()))?;
                close(&mut stack, &mut root, el);
            }
            Event::Text(t) => {
                let s = t.xml10_content().map_err(|e| err(&e))?;
                match stack.last_mut() {
                    Some(top) => top.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err(XmlError("text outside the root element".into())),
                }
            }
            Event::CData(t) => {
                let s = t.decode().map_err(|e| err(&e))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&s);
                }
            }
            Event::GeneralRef(g) => {
                let s = if let Some(c) = g.resolve_char_ref().map_err(|e| err(&e))? {
                    c.to_string()
                } else {
                    let name = g.decode().map_err(|e| err(&e))?;
                    quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| XmlError(format!("unknown entity &{name};")))?
                        .to_owned()
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&s);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(XmlError("unclosed element at the end".into()));
    }
    root.ok_or_else(|| XmlError("no root element".into()))
}

fn close(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

/// Escapes text or an attribute value (`&`, `<`, `>`, `'`, `"`).
pub(crate) fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_entities_and_cdata() {
        let e = parse(
            r#"<?xml version="1.0"?><s:E xmlns:s="urn:s" xmlns="urn:d"><s:A k="1&amp;2">x &lt;y&gt; &#65;<![CDATA[<z>]]></s:A><B/></s:E>"#,
        )
        .unwrap();
        assert_eq!((e.ns.as_str(), e.name.as_str()), ("urn:s", "E"));
        let a = e.child("urn:s", "A").unwrap();
        assert_eq!(a.text, "x <y> A<z>");
        assert_eq!(a.attr("k"), Some("1&2"));
        assert_eq!(e.child("urn:d", "B").unwrap().name, "B");
    }

    #[test]
    fn bad_documents_are_errors() {
        for d in ["", "<a>", "<a></b>", "<a/><b/>", "<a>&bogus;</a>", "x<a/>", &"<a>".repeat(100)] {
            assert!(parse(d).is_err(), "{d}");
        }
    }
}
