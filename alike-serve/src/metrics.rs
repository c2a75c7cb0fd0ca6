//! `/metrics` in the OpenMetrics text format (1.0.0): families gathered
//! from the stores, the engine and the daemon itself, each family's
//! `# HELP`/`# TYPE` once before its samples, label values escaped, and the
//! closing `# EOF`. Prometheus scrapes it; `scripts/test.sh` parses it with
//! the reference Python parser (`prometheus_client.openmetrics`).

use std::fmt::Write;

/// The `Content-Type` of an OpenMetrics answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: &'static str,
    samples: Vec<String>,
}

/// A page of metrics being gathered.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Vec<Family>,
}

impl Metrics {
    /// A gauge sample: `name{labels} value`.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let line = sample(name, labels, value);
        self.family(name, help, "gauge").samples.push(line);
    }

    /// A counter sample (`name` without `_total`; the sample gets it).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let line = sample(&format!("{name}_total"), labels, value);
        self.family(name, help, "counter").samples.push(line);
    }

    fn family(&mut self, name: &str, help: &str, kind: &'static str) -> &mut Family {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family { name: name.into(), help: help.into(), kind, samples: Vec::new() });
                self.families.len() - 1
            }
        };
        &mut self.families[i]
    }

    /// The page, ending in `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            let _ = writeln!(out, "# HELP {} {}", f.name, escape(&f.help, false));
            for s in &f.samples {
                out.push_str(s);
                out.push('\n');
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> String {
    let mut s = name.to_string();
    if !labels.is_empty() {
        s.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{k}=\"{}\"", escape(v, true));
        }
        s.push('}');
    }
    let v = if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    };
    let _ = write!(s, " {v}");
    s
}

/// Escapes `\`, newlines and (in label values) `"`.
fn escape(s: &str, quote: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '"' if quote => o.push_str("\\\""),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_grouped_and_escaped() {
        let mut m = Metrics::default();
        m.gauge("a_bytes", "A.", &[("vm", "w\"e\\b\n")], 1.5);
        m.counter("b_runs", "B.", &[], 3.0);
        m.gauge("a_bytes", "A.", &[("vm", "x")], 2.0);
        assert_eq!(
            m.render(),
            "# TYPE a_bytes gauge\n# HELP a_bytes A.\na_bytes{vm=\"w\\\"e\\\\b\\n\"} 1.5\na_bytes{vm=\"x\"} 2\n\
             # TYPE b_runs counter\n# HELP b_runs B.\nb_runs_total 3\n# EOF\n"
        );
    }
}
