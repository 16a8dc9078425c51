//! Text helpers for the pages: HTML escaping with query-term highlighting, time and
//! latency formatting, URL encoding and input validation.
//!
//! Highlighting is the one place where the UI emits markup built around log text, so it
//! does its own escaping: matches are found on the raw text, then every piece (matched
//! or not) is escaped before it is written, and only our own `<mark>` tags are added.
//! The result is a [`SafeHtml`], which can only be built here, so templates never need
//! `|safe` on anything that came from a log. The trade-off is that matching is
//! per-character case folding, not the indexer's tokenizer: a highlight can be slightly
//! wider or narrower than what the index matched, never unescaped.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};

/// HTML that is safe to write into a page as is. Only this module can build one, and
/// only from escaped text plus fixed tags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SafeHtml(String);

impl SafeHtml {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafeHtml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Escaped at construction; askama must not escape it a second time.
impl askama::filters::HtmlSafe for SafeHtml {}

/// Escapes the five characters that matter in HTML text and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    escape_into(&mut out, text);
    out
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// The free-text words and phrases of a query, the ones worth highlighting in a
/// message: field terms (`app:fib`), operators and excluded terms (`-foo`, `NOT foo`)
/// are left out, wildcards and fuzzy/boost suffixes are stripped. `msg:word` counts as
/// free text because it searches the message.
pub fn highlight_terms(query: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut negate_next = false;
    for token in tokenize(query) {
        let mut t = token.as_str().trim_start_matches('(').trim_end_matches(')');
        match t {
            "AND" | "OR" | "&&" | "||" => continue,
            "NOT" => {
                negate_next = true;
                continue;
            }
            _ => {}
        }
        if std::mem::take(&mut negate_next) || t.starts_with('-') || t.starts_with('!') {
            continue;
        }
        t = t.trim_start_matches('+');
        if let Some((field, value)) = split_field(t) {
            if field != "msg" {
                continue;
            }
            t = value;
        }
        let t = if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
            &t[1..t.len() - 1]
        } else {
            // `word~2`, `word^3`: the suffix is syntax, not text.
            let t = t.split(['~', '^']).next().unwrap_or("");
            t.trim_matches(|c| c == '*' || c == '?')
        };
        let t = t.trim();
        if t.is_empty() || t.contains(['*', '?']) || t.starts_with(['[', '{', '>', '<']) {
            continue;
        }
        if !terms.iter().any(|x: &String| x.eq_ignore_ascii_case(t)) {
            terms.push(t.to_string());
        }
    }
    terms
}

/// `field:value` outside quotes, or `None` for a bare word or phrase.
fn split_field(token: &str) -> Option<(&str, &str)> {
    if token.starts_with('"') {
        return None;
    }
    let i = token.find(':')?;
    let (field, value) = (&token[..i], &token[i + 1..]);
    let is_field = !field.is_empty()
        && field
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.');
    is_field.then_some((field, value))
}

/// Splits a query on whitespace outside double quotes; quotes stay in the tokens.
pub fn tokenize(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in query.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                cur.push(c);
                in_quotes = !in_quotes;
            }
            c if c.is_whitespace() && !in_quotes => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The app a query is restricted to by its first `app:NAME` term, if any.
pub fn query_app(query: &str) -> Option<String> {
    tokenize(query).into_iter().find_map(|t| {
        t.strip_prefix("app:")
            .map(|a| a.trim_matches('"').to_string())
            .filter(|a| !a.is_empty())
    })
}

/// `query` with its `app:` terms replaced by `app:APP` in front (or removed when `app`
/// is empty): what choosing an app in the picker does.
pub fn set_query_app(query: &str, app: &str) -> String {
    let mut parts: Vec<String> = tokenize(query)
        .into_iter()
        .filter(|t| !t.starts_with("app:"))
        .collect();
    if !app.is_empty() {
        parts.insert(0, format!("app:{app}"));
    }
    parts.join(" ")
}

/// `text` escaped, with every case-insensitive occurrence of `terms` wrapped in
/// `<mark>`. Overlapping matches merge into one mark.
pub fn highlight(text: &str, terms: &[String]) -> SafeHtml {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let folded: Vec<Vec<char>> = terms
        .iter()
        .map(|t| t.chars().flat_map(char::to_lowercase).collect())
        .filter(|t: &Vec<char>| !t.is_empty())
        .collect();
    if !folded.is_empty() {
        for (start, _) in text.char_indices() {
            for term in &folded {
                if let Some(end) = match_at(text, start, term) {
                    ranges.push((start, end));
                }
            }
        }
    }
    ranges.sort_unstable();
    let mut out = String::with_capacity(text.len() + text.len() / 8 + ranges.len() * 13);
    let mut pos = 0;
    let mut i = 0;
    while i < ranges.len() {
        let (start, mut end) = ranges[i];
        if start < pos {
            i += 1;
            continue;
        }
        // Merge every range that overlaps or touches this one.
        i += 1;
        while i < ranges.len() && ranges[i].0 <= end {
            end = end.max(ranges[i].1);
            i += 1;
        }
        escape_into(&mut out, &text[pos..start]);
        out.push_str("<mark>");
        escape_into(&mut out, &text[start..end]);
        out.push_str("</mark>");
        pos = end;
    }
    escape_into(&mut out, &text[pos..]);
    SafeHtml(out)
}

/// The byte end of `term` (already lowercased) matched at `start` of `text`, comparing
/// lowercased characters.
fn match_at(text: &str, start: usize, term: &[char]) -> Option<usize> {
    let mut want = term.iter();
    let mut next = want.next();
    for (i, c) in text[start..].char_indices() {
        for lc in c.to_lowercase() {
            match next {
                Some(&w) if w == lc => next = want.next(),
                _ => return None,
            }
        }
        if next.is_none() {
            return Some(start + i + c.len_utf8());
        }
    }
    None
}

/// `2026-11-23 10:00:00.123`: UTC with milliseconds, the table's time column.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// RFC 3339 with milliseconds, as URLs and the indexer's `start`/`end` take it.
pub fn rfc3339_ms(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A timestamp string from the scheduler, shown as [`format_ts`] when it parses and as
/// given when it does not.
pub fn format_ts_str(ts: &str) -> String {
    match DateTime::parse_from_rfc3339(ts) {
        Ok(t) => format_ts(t.with_timezone(&Utc)),
        Err(_) => ts.to_string(),
    }
}

/// `3s ago`, `5m ago`, `2h ago`, `4d ago` (`in the future` for clock skew).
pub fn format_ago(now: DateTime<Utc>, ts: DateTime<Utc>) -> String {
    let secs = (now - ts).num_seconds();
    if secs < 0 {
        return "in the future".to_string();
    }
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// `0.42 ms`, `12.3 ms`, `250 ms`, `1.25 s`.
pub fn format_latency(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        return "?".to_string();
    }
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// The short form of a task id: the part after `<app>.`, cut to 8 characters.
pub fn short_task(app: &str, task: &str) -> String {
    let rest = task
        .strip_prefix(app)
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or(task);
    rest.chars().take(8).collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for one query value
/// or path segment.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/path?k=v&...` with each value encoded; empty values are left out.
pub fn href(path: &str, params: &[(&str, &str)]) -> String {
    let mut out = path.to_string();
    let mut sep = '?';
    for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
        out.push(sep);
        out.push_str(k);
        out.push('=');
        out.push_str(&url_encode(v));
        sep = '&';
    }
    out
}

/// An app name is 1 to 128 ASCII letters, digits, `.`, `_`, `-` or `/` (Marathon group
/// paths), so `app:NAME` is a single query term.
pub fn valid_app_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn terms(q: &str) -> Vec<String> {
        highlight_terms(q)
    }

    #[test]
    fn script_in_a_message_is_escaped_even_when_highlighted() {
        let html = highlight("<script>alert(1)</script> and alert again", &terms("alert"));
        assert_eq!(
            html.as_str(),
            "&lt;script&gt;<mark>alert</mark>(1)&lt;/script&gt; and <mark>alert</mark> again"
        );
        let html = highlight("<script>alert(1)</script>", &terms("script"));
        assert_eq!(
            html.as_str(),
            "&lt;<mark>script</mark>&gt;alert(1)&lt;/<mark>script</mark>&gt;"
        );
        assert!(!html.as_str().contains("<script"));
    }

    #[test]
    fn entities_in_a_message_are_escaped_not_decoded() {
        let html = highlight("a &amp; b & \"c\" 'd'", &[]);
        assert_eq!(
            html.as_str(),
            "a &amp;amp; b &amp; &quot;c&quot; &#39;d&#39;"
        );
        // A term that spells part of an entity must not split the escaped output.
        let html = highlight("x & y", &terms("amp"));
        assert_eq!(html.as_str(), "x &amp; y");
        let html = highlight("&amp;", &terms("amp"));
        assert_eq!(html.as_str(), "&amp;<mark>amp</mark>;");
    }

    #[test]
    fn highlight_is_case_insensitive_and_merges_overlaps() {
        let html = highlight("Timed OUT after TIMEOUT", &terms("timed out timeout"));
        assert_eq!(
            html.as_str(),
            "<mark>Timed</mark> <mark>OUT</mark> after <mark>TIMEOUT</mark>"
        );
        let html = highlight("abcd", &["abc".to_string(), "bcd".to_string()]);
        assert_eq!(html.as_str(), "<mark>abcd</mark>");
    }

    #[test]
    fn highlight_handles_non_ascii() {
        let html = highlight("Grüße aus KÖLN", &terms("köln"));
        assert_eq!(html.as_str(), "Grüße aus <mark>KÖLN</mark>");
    }

    #[test]
    fn terms_skip_fields_operators_and_exclusions() {
        assert_eq!(
            terms(
                r#"app:fib AND level:error "timed out" -noise NOT skip +must msg:body wild* (grouped)"#
            ),
            vec!["timed out", "must", "body", "wild", "grouped"]
        );
        assert!(terms("latency_ms:>250 host:node-2 fields.user:alice").is_empty());
        assert_eq!(terms("fuzzy~2 boost^3"), vec!["fuzzy", "boost"]);
    }

    #[test]
    fn app_terms_are_replaced() {
        assert_eq!(query_app("level:error app:fib x"), Some("fib".to_string()));
        assert_eq!(query_app("level:error"), None);
        assert_eq!(
            set_query_app("app:old \"a b\" x", "fib"),
            "app:fib \"a b\" x"
        );
        assert_eq!(set_query_app("app:old x", ""), "x");
    }

    #[test]
    fn times_are_utc_with_milliseconds() {
        let ts: DateTime<Utc> = "2026-11-23T10:00:00.123456Z".parse().unwrap();
        assert_eq!(format_ts(ts), "2026-11-23 10:00:00.123");
        assert_eq!(rfc3339_ms(ts), "2026-11-23T10:00:00.123Z");
        let ts: DateTime<Utc> = "2026-11-23T12:00:00+02:00".parse().unwrap();
        assert_eq!(format_ts(ts), "2026-11-23 10:00:00.000");
        assert_eq!(
            format_ts_str("2026-11-23T12:00:00+02:00"),
            "2026-11-23 10:00:00.000"
        );
        assert_eq!(format_ts_str("not a time"), "not a time");
        let now: DateTime<Utc> = "2026-11-23T10:05:00Z".parse().unwrap();
        let then: DateTime<Utc> = "2026-11-23T10:04:57Z".parse().unwrap();
        assert_eq!(format_ago(now, then), "3s ago");
        assert_eq!(format_ago(then, now), "in the future");
        assert_eq!(
            format_ago(now, "2026-11-23T08:00:00Z".parse().unwrap()),
            "2h ago"
        );
    }

    #[test]
    fn latencies_read_naturally() {
        assert_eq!(format_latency(0.42), "0.42 ms");
        assert_eq!(format_latency(12.34), "12.3 ms");
        assert_eq!(format_latency(250.0), "250 ms");
        assert_eq!(format_latency(1250.0), "1.25 s");
        assert_eq!(format_latency(f64::NAN), "?");
    }

    #[test]
    fn task_ids_shorten() {
        assert_eq!(short_task("fib", "fib.0f3c1a2b-7d"), "0f3c1a2b");
        assert_eq!(short_task("fib", "other.1234"), "other.12");
    }

    #[test]
    fn app_names_are_validated() {
        assert!(valid_app_name("fib"));
        assert!(valid_app_name("group/fib-2.v1"));
        assert!(!valid_app_name("fib OR x"));
        assert!(!valid_app_name(""));
        assert!(!valid_app_name("a\"b"));
    }

    #[test]
    fn hrefs_encode_values() {
        assert_eq!(
            href(
                "/",
                &[("q", "app:fib \"a&b\""), ("cursor", ""), ("range", "5m")]
            ),
            "/?q=app%3Afib%20%22a%26b%22&range=5m"
        );
    }

    proptest! {
        #[test]
        fn highlighted_output_never_contains_raw_markup(text in ".*", q in "[a-z<>&\" ]{0,12}") {
            let html = highlight(&text, &highlight_terms(&q));
            let stripped = html.as_str().replace("<mark>", "").replace("</mark>", "");
            prop_assert!(!stripped.contains('<') && !stripped.contains('>'));
            prop_assert_eq!(stripped, escape_html(&text));
        }
    }
}
