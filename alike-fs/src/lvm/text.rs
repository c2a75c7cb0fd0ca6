//! The LVM2 metadata text format ("Text Format Volume Group", LVM's
//! `lib/config` syntax): `key = value` lines, `name { … }` sections and
//! `[ … ]` lists of strings and numbers, `#` comments, strings in double
//! (or single) quotes with `\` escaping the next character.
//!
//! The text comes from a disk image, so the parser is total and bounded:
//! nesting deeper than [`MAX_DEPTH`] or more than [`MAX_NODES`] values and
//! entries is an error, never a deep recursion or a large allocation, and
//! integers that do not fit an `i64` are errors (LVM's own type).

/// Sections nest at most this deep. Volume group metadata nests four deep
/// (`vg { logical_volumes { lv { segment1 { … } } } }`).
pub(crate) const MAX_DEPTH: usize = 32;

/// At most this many entries and list elements in one text: bounds the
/// tree whatever the text's size (a list of one-digit numbers costs two
/// bytes of text each but tens of bytes of tree).
pub(crate) const MAX_NODES: usize = 1 << 20;

/// A value on the right of `=`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// An integer (LVM's `int64_t`).
    Int(i64),
    /// A number with a fraction (LVM's config syntax has them; volume
    /// group metadata does not use them).
    Float(f64),
    /// A string, unescaped.
    Str(String),
    /// A list of scalars (never nested).
    List(Vec<Value>),
}

/// What a key names: a value or a section.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// `key = value`.
    Value(Value),
    /// `key { … }`.
    Section(Section),
}

/// The entries of a section (or of the whole text), in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Section {
    pub(crate) entries: Vec<(String, Node)>,
}

impl Section {
    /// The first entry named `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    /// The value named `key`, if it is a value.
    pub(crate) fn value(&self, key: &str) -> Option<&Value> {
        match self.get(key) {
            Some(Node::Value(v)) => Some(v),
            _ => None,
        }
    }

    /// The section named `key`, if it is a section.
    pub(crate) fn section(&self, key: &str) -> Option<&Section> {
        match self.get(key) {
            Some(Node::Section(s)) => Some(s),
            _ => None,
        }
    }

    /// The subsections, in order, with their names.
    pub(crate) fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.entries.iter().filter_map(|(k, n)| match n {
            Node::Section(s) => Some((k.as_str(), s)),
            Node::Value(_) => None,
        })
    }
}

/// Why a text did not parse: what, and the byte offset where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) offset: usize,
    pub(crate) what: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "metadata text at byte {}: {}", self.offset, self.what)
    }
}

/// Parses a whole metadata text (up to its first NUL, as LVM reads a C
/// string) into its top-level section.
pub(crate) fn parse(text: &[u8]) -> Result<Section, ParseError> {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let mut p = Parser { s: &text[..end], pos: 0, nodes: 0 };
    p.body(0)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Eq,
    Open,
    Close,
    ListOpen,
    ListClose,
    Comma,
    End,
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'#' | b'=' | b'{' | b'}' | b'[' | b']' | b',' | b'"' | b'\'')
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    nodes: usize,
}

impl Parser<'_> {
    fn err<T>(&self, at: usize, what: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { offset: at, what: what.into() })
    }

    fn count(&mut self, at: usize) -> Result<(), ParseError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return self.err(at, format!("more than {MAX_NODES} entries and values"));
        }
        Ok(())
    }

    fn skip_space(&mut self) {
        while let Some(&b) = self.s.get(self.pos) {
            if b == b'#' {
                while self.s.get(self.pos).is_some_and(|&b| b != b'\n') {
                    self.pos += 1;
                }
            } else if b.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// The next token and where it starts.
    fn next(&mut self) -> Result<(usize, Token), ParseError> {
        self.skip_space();
        let at = self.pos;
        let Some(&b) = self.s.get(at) else {
            return Ok((at, Token::End));
        };
        let single = match b {
            b'=' => Some(Token::Eq),
            b'{' => Some(Token::Open),
            b'}' => Some(Token::Close),
            b'[' => Some(Token::ListOpen),
            b']' => Some(Token::ListClose),
            b',' => Some(Token::Comma),
            _ => None,
        };
        if let Some(t) = single {
            self.pos += 1;
            return Ok((at, t));
        }
        if b == b'"' || b == b'\'' {
            self.pos += 1;
            let mut out = Vec::new();
            loop {
                match self.s.get(self.pos) {
                    None => return self.err(at, "string not terminated"),
                    Some(&c) if c == b => {
                        self.pos += 1;
                        break;
                    }
                    Some(b'\\') if b == b'"' => {
                        let Some(&e) = self.s.get(self.pos + 1) else {
                            return self.err(at, "string not terminated");
                        };
                        out.push(e);
                        self.pos += 2;
                    }
                    Some(&c) => {
                        out.push(c);
                        self.pos += 1;
                    }
                }
            }
            return Ok((at, Token::Str(String::from_utf8_lossy(&out).into_owned())));
        }
        while self.s.get(self.pos).is_some_and(|&c| !is_delimiter(c)) {
            self.pos += 1;
        }
        Ok((at, Token::Word(String::from_utf8_lossy(&self.s[at..self.pos]).into_owned())))
    }

    /// Entries until `}` (depth > 0) or the end of the text (depth 0).
    fn body(&mut self, depth: usize) -> Result<Section, ParseError> {
        let mut section = Section::default();
        loop {
            let (at, t) = self.next()?;
            let key = match t {
                Token::End if depth == 0 => return Ok(section),
                Token::End => return self.err(at, "text ends inside a section"),
                Token::Close if depth > 0 => return Ok(section),
                Token::Word(w) => w,
                other => return self.err(at, format!("expected a name, found {}", describe(&other))),
            };
            self.count(at)?;
            let (at2, t) = self.next()?;
            let node = match t {
                Token::Eq => Node::Value(self.value()?),
                Token::Open => {
                    if depth + 1 > MAX_DEPTH {
                        return self.err(at2, format!("sections nest deeper than {MAX_DEPTH}"));
                    }
                    Node::Section(self.body(depth + 1)?)
                }
                other => {
                    return self.err(at2, format!("expected '=' or '{{' after {key:?}, found {}", describe(&other)));
                }
            };
            section.entries.push((key, node));
        }
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        let (at, t) = self.next()?;
        match t {
            Token::ListOpen => {
                let mut items = Vec::new();
                loop {
                    let (at, t) = self.next()?;
                    match t {
                        Token::ListClose => return Ok(Value::List(items)),
                        t => {
                            self.count(at)?;
                            items.push(self.scalar(at, t)?);
                        }
                    }
                    let (at, t) = self.next()?;
                    match t {
                        Token::Comma => {}
                        Token::ListClose => return Ok(Value::List(items)),
                        other => {
                            return self.err(at, format!("expected ',' or ']' in a list, found {}", describe(&other)));
                        }
                    }
                }
            }
            t => self.scalar(at, t),
        }
    }

    fn scalar(&self, at: usize, t: Token) -> Result<Value, ParseError> {
        match t {
            Token::Str(s) => Ok(Value::Str(s)),
            Token::Word(w) => number(&w)
                .ok_or_else(|| ParseError { offset: at, what: format!("{w:?} is not a number, a string or a list") }),
            other => self.err(at, format!("expected a value, found {}", describe(&other))),
        }
    }
}

/// `-12`, `+3`, `4.5`: what LVM's lexer takes for numbers. Out of `i64`
/// range is not a number.
fn number(w: &str) -> Option<Value> {
    let digits = w.strip_prefix(['-', '+']).unwrap_or(w);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match frac {
        None => w.parse::<i64>().ok().map(Value::Int),
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            w.parse::<f64>().ok().filter(|x| x.is_finite()).map(Value::Float)
        }
        Some(_) => None,
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::Word(w) => format!("{w:?}"),
        Token::Str(_) => "a string".into(),
        Token::Eq => "'='".into(),
        Token::Open => "'{'".into(),
        Token::Close => "'}'".into(),
        Token::ListOpen => "'['".into(),
        Token::ListClose => "']'".into(),
        Token::Comma => "','".into(),
        Token::End => "the end of the text".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metadata_shapes() {
        let text = br#"vg0 {
id = "abc-def"   # a comment with "quotes" and { braces
seqno = 7
status = ["READ", "WRITE"]
flags = []
neg = -3
f = 1.5
physical_volumes {
    pv0 { id = "x\"y\\z" dev_size = 9223372036854775807 }
}
1lv-name.x+ { stripes = [ "pv0", 0, "pv1", 5, ] }
}
# trailer
contents = "Text Format Volume Group"
"#;
        let top = parse(text).unwrap();
        let (name, vg) = top.sections().next().unwrap();
        assert_eq!(name, "vg0");
        assert_eq!(top.value("contents"), Some(&Value::Str("Text Format Volume Group".into())));
        assert_eq!(vg.value("id"), Some(&Value::Str("abc-def".into())));
        assert_eq!(vg.value("seqno"), Some(&Value::Int(7)));
        assert_eq!(vg.value("neg"), Some(&Value::Int(-3)));
        assert_eq!(vg.value("f"), Some(&Value::Float(1.5)));
        assert_eq!(vg.value("flags"), Some(&Value::List(vec![])));
        assert_eq!(vg.value("status"), Some(&Value::List(vec![Value::Str("READ".into()), Value::Str("WRITE".into())])));
        let pv0 = vg.section("physical_volumes").unwrap().section("pv0").unwrap();
        assert_eq!(pv0.value("id"), Some(&Value::Str("x\"y\\z".into())));
        assert_eq!(pv0.value("dev_size"), Some(&Value::Int(i64::MAX)));
        let lv = vg.section("1lv-name.x+").unwrap();
        assert_eq!(
            lv.value("stripes"),
            Some(&Value::List(vec![Value::Str("pv0".into()), Value::Int(0), Value::Str("pv1".into()), Value::Int(5)]))
        );
    }

    #[test]
    fn stops_at_the_first_nul() {
        let top = parse(b"a = 1\0b = !!!").unwrap();
        assert_eq!(top.entries.len(), 1);
    }

    #[test]
    fn refuses_what_is_malformed() {
        for (text, want) in [
            (&b"vg { a = 1"[..], "ends inside a section"),
            (b"a = \"open", "not terminated"),
            (b"a = \"open\\", "not terminated"),
            (b"a = 99999999999999999999", "not a number"),
            (b"a = -", "not a number"),
            (b"a = 1.", "not a number"),
            (b"a = [1 2]", "expected ','"),
            (b"a = [[1]]", "expected a value"),
            (b"a 1", "expected '=' or '{'"),
            (b"}", "expected a name"),
            (b"a = ", "expected a value"),
            (b"= 1", "expected a name"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.what.contains(want), "{:?}: {e}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn bounds_nesting_and_size() {
        let deep = "a {".repeat(MAX_DEPTH + 1) + &"}".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).unwrap_err().what.contains("nest deeper"));
        let ok = "a {".repeat(MAX_DEPTH) + &"}".repeat(MAX_DEPTH);
        parse(ok.as_bytes()).unwrap();
        let many = format!("a = [{}]", "1,".repeat(MAX_NODES + 1));
        assert!(parse(many.as_bytes()).unwrap_err().what.contains("entries and values"));
    }
}
