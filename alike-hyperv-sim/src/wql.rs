//! WQL, the subset WinRM clients send for Hyper-V: `SELECT * | props FROM
//! Class [WHERE p = 'v' [AND …]]` (`=`, `<>`, `!=`; string, number and
//! boolean literals) and `ASSOCIATORS OF {object path} [WHERE AssocClass =
//! A ResultClass = R Role = r ResultRole = q]`; plus WMI object paths.
//! Anything else is `WBEM_E_INVALID_QUERY` to the caller (`OR`, `LIKE`,
//! `REFERENCES OF`, `ISA`, sub-selects).

use crate::cim::Epr;

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Query {
    Select {
        props: Option<Vec<String>>,
        class: String,
        conds: Vec<Cond>,
    },
    Associators {
        object: Epr,
        assoc_class: Option<String>,
        result_class: Option<String>,
        role: Option<String>,
        result_role: Option<String>,
    },
}

/// `prop = value` (or `!=` when `negated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cond {
    pub(crate) prop: String,
    pub(crate) value: String,
    pub(crate) negated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(String),
    Sym(&'static str),
    Path(String),
}

fn lex(q: &str) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = q.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '\'' || ch == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match c.get(i) {
                    None => return Err("unterminated string".into()),
                    Some('\\') => {
                        s.push(*c.get(i + 1).ok_or("unterminated string")?);
                        i += 2;
                    }
                    Some(x) if *x == ch => {
                        i += 1;
                        break;
                    }
                    Some(x) => {
                        s.push(*x);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
        } else if ch == '{' {
            // An object path runs to the matching `}` outside quotes.
            let mut s = String::new();
            let mut quote = false;
            i += 1;
            loop {
                match c.get(i) {
                    None => return Err("unterminated object path".into()),
                    Some('\\') if quote => {
                        s.push('\\');
                        s.push(*c.get(i + 1).ok_or("unterminated object path")?);
                        i += 2;
                        continue;
                    }
                    Some('"') => quote = !quote,
                    Some('}') if !quote => {
                        i += 1;
                        break;
                    }
                    _ => {}
                }
                s.push(c[i]);
                i += 1;
            }
            out.push(Tok::Path(s));
        } else if ch == '=' {
            out.push(Tok::Sym("="));
            i += 1;
        } else if ch == ',' {
            out.push(Tok::Sym(","));
            i += 1;
        } else if ch == '*' {
            out.push(Tok::Sym("*"));
            i += 1;
        } else if (ch == '!' && c.get(i + 1) == Some(&'=')) || (ch == '<' && c.get(i + 1) == Some(&'>')) {
            out.push(Tok::Sym("!="));
            i += 2;
        } else if ch.is_alphanumeric() || ch == '_' || ch == '-' || ch == '.' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '-' || c[i] == '.') {
                i += 1;
            }
            out.push(Tok::Word(c[start..i].iter().collect()));
        } else {
            return Err(format!("unexpected character {ch:?}"));
        }
    }
    Ok(out)
}

fn word_is(t: Option<&Tok>, w: &str) -> bool {
    matches!(t, Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
}

/// Parses a WQL query.
pub(crate) fn parse(q: &str) -> Result<Query, String> {
    let t = lex(q)?;
    let mut i = 0;
    let word = |i: &mut usize| -> Result<String, String> {
        match t.get(*i) {
            Some(Tok::Word(w)) => {
                *i += 1;
                Ok(w.clone())
            }
            other => Err(format!("expected a name, found {other:?}")),
        }
    };
    if word_is(t.first(), "SELECT") {
        i += 1;
        let props = if t.get(i) == Some(&Tok::Sym("*")) {
            i += 1;
            None
        } else {
            let mut p = vec![word(&mut i)?];
            while t.get(i) == Some(&Tok::Sym(",")) {
                i += 1;
                p.push(word(&mut i)?);
            }
            Some(p)
        };
        if !word_is(t.get(i), "FROM") {
            return Err("expected FROM".into());
        }
        i += 1;
        let class = word(&mut i)?;
        let mut conds = Vec::new();
        if word_is(t.get(i), "WHERE") {
            i += 1;
            loop {
                let prop = word(&mut i)?;
                let negated = match t.get(i) {
                    Some(Tok::Sym("=")) => false,
                    Some(Tok::Sym("!=")) => true,
                    other => return Err(format!("expected = or <>, found {other:?}")),
                };
                i += 1;
                let value = match t.get(i) {
                    Some(Tok::Str(s)) => s.clone(),
                    Some(Tok::Word(w)) if w.parse::<i128>().is_ok() => w.clone(),
                    Some(Tok::Word(w)) if w.eq_ignore_ascii_case("TRUE") || w.eq_ignore_ascii_case("FALSE") => {
                        w.to_uppercase()
                    }
                    other => return Err(format!("expected a literal, found {other:?}")),
                };
                i += 1;
                conds.push(Cond { prop, value, negated });
                if word_is(t.get(i), "AND") {
                    i += 1;
                } else {
                    break;
                }
            }
        }
        if i != t.len() {
            return Err(format!("unexpected {:?}", t[i]));
        }
        Ok(Query::Select { props, class, conds })
    } else if word_is(t.first(), "ASSOCIATORS") && word_is(t.get(1), "OF") {
        let Some(Tok::Path(p)) = t.get(2) else { return Err("expected {object path}".into()) };
        let object = parse_path(p)?;
        i = 3;
        let (mut assoc_class, mut result_class, mut role, mut result_role) = (None, None, None, None);
        if word_is(t.get(i), "WHERE") {
            i += 1;
            while i < t.len() {
                let k = word(&mut i)?;
                if t.get(i) != Some(&Tok::Sym("=")) {
                    return Err(format!("expected = after {k}"));
                }
                i += 1;
                let v = word(&mut i)?;
                match k.to_ascii_lowercase().as_str() {
                    "assocclass" => assoc_class = Some(v),
                    "resultclass" => result_class = Some(v),
                    "role" => role = Some(v),
                    "resultrole" => result_role = Some(v),
                    _ => return Err(format!("unsupported associators qualifier {k}")),
                }
            }
        } else if i != t.len() {
            return Err(format!("unexpected {:?}", t[i]));
        }
        Ok(Query::Associators { object, assoc_class, result_class, role, result_role })
    } else {
        Err("only SELECT and ASSOCIATORS OF queries are supported".into())
    }
}

/// Parses a WMI object path: `[\\host\namespace:]Class.Key="v",K2="w"` (or
/// `Class="v"` for a single key, given as the class's first key).
pub(crate) fn parse_path(p: &str) -> Result<Epr, String> {
    let p = p.trim();
    // The class starts after the namespace's `:` (a key value may hold `:` too).
    let first_quote = p.find('"').unwrap_or(p.len());
    let p = match p[..first_quote].rfind(':') {
        Some(c) => &p[c + 1..],
        None => p,
    };
    let (class, rest) = match p.find(['.', '=']) {
        Some(d) => (&p[..d], &p[d..]),
        None => return Err(format!("object path without keys: {p}")),
    };
    let mut keys = Vec::new();
    let c: Vec<char> = rest.chars().collect();
    let mut i = 0;
    while i < c.len() {
        let mut name = String::new();
        if c[i] == '.' || c[i] == ',' {
            i += 1;
        }
        while i < c.len() && c[i] != '=' {
            name.push(c[i]);
            i += 1;
        }
        i += 1; // '='
        let mut v = String::new();
        if c.get(i) == Some(&'"') {
            i += 1;
            loop {
                match c.get(i) {
                    None => return Err("unterminated key value".into()),
                    Some('\\') => {
                        v.push(*c.get(i + 1).ok_or("unterminated key value")?);
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(x) => {
                        v.push(*x);
                        i += 1;
                    }
                }
            }
        } else {
            while i < c.len() && c[i] != ',' {
                v.push(c[i]);
                i += 1;
            }
        }
        let name = name.trim();
        let name = if name.is_empty() {
            crate::cim::key_names(class).first().copied().unwrap_or("InstanceID").to_owned()
        } else {
            name.to_owned()
        };
        keys.push((name, v));
    }
    if class.is_empty() || keys.is_empty() {
        return Err(format!("bad object path {p}"));
    }
    Ok(Epr { class: class.to_owned(), keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_and_associators() {
        assert_eq!(
            parse("SELECT * FROM Msvm_ComputerSystem WHERE ElementName='web 01' AND EnabledState <> 3").unwrap(),
            Query::Select {
                props: None,
                class: "Msvm_ComputerSystem".into(),
                conds: vec![
                    Cond { prop: "ElementName".into(), value: "web 01".into(), negated: false },
                    Cond { prop: "EnabledState".into(), value: "3".into(), negated: true },
                ],
            }
        );
        let q = parse(r#"ASSOCIATORS OF {\\HV\root\virtualization\v2:Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="AB-12"} WHERE AssocClass = Msvm_SettingsDefineState ResultClass = Msvm_VirtualSystemSettingData"#).unwrap();
        let Query::Associators { object, assoc_class, result_class, .. } = q else { panic!() };
        assert_eq!(object.class, "Msvm_ComputerSystem");
        assert_eq!(object.keys[1], ("Name".into(), "AB-12".into()));
        assert_eq!(assoc_class.as_deref(), Some("Msvm_SettingsDefineState"));
        assert_eq!(result_class.as_deref(), Some("Msvm_VirtualSystemSettingData"));
        let p = parse_path(r#"Msvm_StorageAllocationSettingData.InstanceID="Microsoft:A\\B\\0\\L""#).unwrap();
        assert_eq!(p.keys[0].1, r"Microsoft:A\B\0\L");
    }

    #[test]
    fn unsupported_queries_are_errors() {
        for q in [
            "",
            "SELECT",
            "SELECT * FROM",
            "DELETE FROM x",
            "SELECT * FROM A WHERE x = 1 OR y = 2",
            "SELECT * FROM A WHERE x LIKE 'a'",
            "ASSOCIATORS OF {A",
            "SELECT * FROM A WHERE x = 'open",
        ] {
            assert!(parse(q).is_err(), "{q}");
        }
    }
}
