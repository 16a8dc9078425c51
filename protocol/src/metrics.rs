//! A small writer of the Prometheus text exposition format, shared by every part's
//! `/metrics` so none of them formats `# HELP`/`# TYPE` lines, label escaping or
//! numbers by hand.
//!
//! A writer rather than a registry (such as prometheus-client): each part keeps its
//! counters as plain atomics where it counts them and writes them out at scrape
//! time. The trade-off is that nothing stops two parts from declaring one family;
//! the binary's `merge_expositions` joins such families when it serves one process's
//! text, and [`Exposition::family`] only guarantees a family is declared once per
//! writer.

use crate::histogram::{escape_label, Histogram};
use std::collections::BTreeSet;
use std::fmt::Write;

/// The Prometheus metric type named on a family's `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value: integers as written, floats as Prometheus spells them
/// (`NaN`, `+Inf`, `-Inf`, otherwise the shortest decimal that reads back the same).
pub trait Value {
    fn write_to(&self, out: &mut String);
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn write_to(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
int_value!(u8, u16, u32, u64, usize, i32, i64);

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

/// A float written with a fixed number of decimals (`Fixed(2.5, 3)` is `2.500`), for
/// series whose precision is part of what they promise (milliseconds of a lag).
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub f64, pub usize);

impl Value for Fixed {
    fn write_to(&self, out: &mut String) {
        if self.0.is_finite() {
            let _ = write!(out, "{:.*}", self.1, self.0);
        } else {
            self.0.write_to(out);
        }
    }
}

/// One scrape's text, built family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    /// The family samples are written under.
    current: String,
    declared: BTreeSet<String>,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts the family `name`: its `# HELP` and `# TYPE` lines, written only the
    /// first time `name` is declared in this exposition. Later samples belong to it.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        if self.declared.insert(name.to_string()) {
            // HELP text escapes backslash and newline (not quotes).
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(
                self.out,
                "# HELP {name} {help}\n# TYPE {name} {}",
                kind.as_str()
            );
        }
        self.current = name.to_string();
        self
    }

    /// A sample of the current family with `labels` (names as given, values escaped).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Value) -> &mut Self {
        let name = std::mem::take(&mut self.current);
        self.write_sample(&name, labels, &value);
        self.current = name;
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: impl Value) -> &mut Self {
        self.family(name, help, kind).sample(&[], value)
    }

    /// The histogram family `name` with its buckets, `_sum` and `_count` under `labels`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        h: &Histogram,
    ) -> &mut Self {
        let mut rendered = String::new();
        h.render(&mut rendered, name, help, &label_pairs(labels));
        if self.declared.insert(name.to_string()) {
            self.out.push_str(&rendered);
        } else {
            // A second series of a declared family: its samples without the header.
            for line in rendered.lines().filter(|l| !l.starts_with('#')) {
                self.out.push_str(line);
                self.out.push('\n');
            }
        }
        self.current = name.to_string();
        self
    }

    /// Text already in the exposition format (from a part that renders its own),
    /// appended as it is.
    pub fn raw(&mut self, text: &str) -> &mut Self {
        self.out.push_str(text);
        if !text.is_empty() && !text.ends_with('\n') {
            self.out.push('\n');
        }
        self
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn write_sample(&mut self, name: &str, labels: &[(&str, &str)], value: &dyn Value) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            self.out.push_str(&label_pairs(labels));
            self.out.push('}');
        }
        self.out.push(' ');
        value.write_to(&mut self.out);
        self.out.push('\n');
    }
}

/// `k="v"` pairs joined by commas, values escaped.
fn label_pairs(labels: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape_label(v));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn declares_each_family_once() {
        let mut e = Exposition::new();
        e.family("a_total", "A.", Kind::Counter)
            .sample(&[("host", "h1")], 1u64);
        e.family("a_total", "A.", Kind::Counter)
            .sample(&[("host", "h2")], 2u64);
        e.single("b", "B.", Kind::Gauge, 0.5);
        assert_eq!(
            e.finish(),
            "# HELP a_total A.\n# TYPE a_total counter\na_total{host=\"h1\"} 1\na_total{host=\"h2\"} 2\n# HELP b B.\n# TYPE b gauge\nb 0.5\n"
        );
    }

    #[test]
    fn floats_as_prometheus_spells_them() {
        let mut e = Exposition::new();
        e.family("x", "X.", Kind::Gauge)
            .sample(&[], f64::NAN)
            .sample(&[], f64::INFINITY)
            .sample(&[], f64::NEG_INFINITY)
            .sample(&[], 3.0)
            .sample(&[], -0.25)
            .sample(&[], Fixed(2.5, 3));
        let text = e.finish();
        let values: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(values, ["NaN", "+Inf", "-Inf", "3", "-0.25", "2.500"]);
    }

    #[test]
    fn histograms_with_escaped_labels_and_one_header() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(2));
        let mut e = Exposition::new();
        e.histogram("r_seconds", "R.", &[("app", "a\"b")], &h);
        e.histogram("r_seconds", "R.", &[("app", "c")], &h);
        let text = e.finish();
        assert_eq!(text.matches("# TYPE r_seconds histogram").count(), 1);
        assert!(
            text.contains("r_seconds_bucket{app=\"a\\\"b\",le=\"0.0025\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("r_seconds_count{app=\"c\"} 1\n"), "{text}");
    }

    /// Reads a label value back as Prometheus's parser does.
    fn unescape(s: &str) -> Option<String> {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    'n' => out.push('\n'),
                    _ => return None,
                },
                '"' | '\n' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    }

    /// A sample line's name, labels and value.
    type Sample = (String, Vec<(String, String)>, String);

    /// Splits `name{k="v",...} value` into its parts, or None if it is not one.
    fn parse_sample(line: &str) -> Option<Sample> {
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            while !rest.starts_with('}') {
                let eq = rest.find("=\"")?;
                let key = rest[..eq].to_string();
                rest = &rest[eq + 2..];
                // The value ends at the first quote not escaped.
                let mut end = None;
                let mut escaped = false;
                for (i, c) in rest.char_indices() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                let end = end?;
                labels.push((key, unescape(&rest[..end])?));
                rest = &rest[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
            rest = &rest[1..];
        }
        Some((
            name.to_string(),
            labels,
            rest.strip_prefix(' ')?.to_string(),
        ))
    }

    proptest! {
        #[test]
        fn every_line_parses_and_label_values_round_trip(
            values in proptest::collection::vec(any::<String>(), 1..5),
            n in any::<u64>(),
        ) {
            let mut e = Exposition::new();
            e.family("p_total", "P.", Kind::Counter);
            for v in &values {
                e.sample(&[("a", v.as_str()), ("b", "x")], n);
            }
            let text = e.finish();
            let samples: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
            prop_assert_eq!(samples.len(), values.len());
            for (line, v) in samples.iter().zip(&values) {
                let (name, labels, value) = parse_sample(line)
                    .ok_or_else(|| TestCaseError::fail(format!("unparsable {line:?}")))?;
                prop_assert_eq!(name, "p_total");
                prop_assert_eq!(
                    labels,
                    vec![("a".to_string(), v.clone()), ("b".to_string(), "x".to_string())]
                );
                prop_assert_eq!(value, n.to_string());
            }
        }
    }
}
