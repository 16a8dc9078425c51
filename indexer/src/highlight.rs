//! Highlighting of `msg` in search hits: which words of a query to mark, where they
//! are in a message, and short HTML fragments around them.
//!
//! The words come from the query's positive clauses on `msg` (a `-word` is never
//! marked) and are found with the field's own tokenizer, so a marked span is exactly a
//! token the index matched, with its byte range. The trade-off, shared with Tantivy's
//! `SnippetGenerator`: the words of a phrase are marked wherever they occur in a
//! fragment, not only where the phrase matched, and prefix or regex terms are not
//! marked at all. Unlike `SnippetGenerator` (one best fragment, trailing punctuation
//! cut), a message that fits in one fragment is returned whole, and longer ones give
//! several fragments in text order, as Elasticsearch does. Fragments are always
//! HTML-escaped; only the tags around matches are markup.

use std::collections::BTreeSet;
use tantivy::query::{BooleanQuery, Occur, Query};
use tantivy::schema::Field;
use tantivy::tokenizer::TextAnalyzer;

/// Bytes of a fragment (before escaping) of the native search API.
pub const FRAGMENT_SIZE: usize = 150;
/// Fragments per hit of the native search API.
pub const MAX_FRAGMENTS: usize = 3;
pub const PRE_TAG: &str = "<em>";
pub const POST_TAG: &str = "</em>";

/// The tokens of `fields` that `query` looks for, outside of negated clauses.
pub fn positive_terms(query: &dyn Query, field: &[Field]) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    collect_positive(query, field, &mut words);
    words
}

fn collect_positive(query: &dyn Query, field: &[Field], words: &mut BTreeSet<String>) {
    if let Some(b) = query.downcast_ref::<BooleanQuery>() {
        for (occur, sub) in b.clauses() {
            if *occur != Occur::MustNot {
                collect_positive(sub.as_ref(), field, words);
            }
        }
        return;
    }
    query.query_terms(&mut |term, _| {
        if field.contains(&term.field()) {
            if let Some(text) = term.value().as_str() {
                words.insert(text.to_string());
            }
        }
    });
}

/// Byte ranges of the tokens of `text` that are in `words`: sorted and disjoint
/// (tokens never overlap).
pub fn match_ranges(
    tokenizer: &mut TextAnalyzer,
    words: &BTreeSet<String>,
    text: &str,
) -> Vec<[usize; 2]> {
    let mut ranges = Vec::new();
    if words.is_empty() {
        return ranges;
    }
    let mut stream = tokenizer.token_stream(text);
    while let Some(token) = stream.next() {
        if words.contains(&token.text) {
            ranges.push([token.offset_from, token.offset_to]);
        }
    }
    ranges
}

/// How fragments are cut and marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentOptions {
    /// Bytes of text per fragment (a fragment grows past it only to keep a match
    /// whole); 0 means the whole text as one fragment.
    pub size: usize,
    /// Most fragments per text; 0 means the whole text as one fragment.
    pub max: usize,
    pub pre_tag: String,
    pub post_tag: String,
}

impl Default for FragmentOptions {
    fn default() -> Self {
        FragmentOptions {
            size: FRAGMENT_SIZE,
            max: MAX_FRAGMENTS,
            pre_tag: PRE_TAG.to_string(),
            post_tag: POST_TAG.to_string(),
        }
    }
}

/// HTML fragments of `text` around the matches `ranges` (sorted, disjoint, on char
/// boundaries, as [`match_ranges`] gives them), in text order. Nothing when nothing
/// matched: there is nothing to show a reader that the full message does not.
pub fn fragments(text: &str, ranges: &[[usize; 2]], opts: &FragmentOptions) -> Vec<String> {
    windows(text, ranges, opts.size, opts.max)
        .into_iter()
        .map(|(start, end)| {
            let mut html = String::with_capacity(end - start + 16);
            let mut at = start;
            for r in ranges.iter().filter(|r| r[0] >= start && r[1] <= end) {
                escape_html(&text[at..r[0]], &mut html);
                html.push_str(&opts.pre_tag);
                escape_html(&text[r[0]..r[1]], &mut html);
                html.push_str(&opts.post_tag);
                at = r[1];
            }
            escape_html(&text[at..end], &mut html);
            html
        })
        .collect()
}

/// The byte windows of the fragments: each starts a little before its first match
/// (at a word start when there is one), takes every match that begins within `size`
/// bytes, and ends at a word end.
fn windows(text: &str, ranges: &[[usize; 2]], size: usize, max: usize) -> Vec<(usize, usize)> {
    if ranges.is_empty() {
        return Vec::new();
    }
    if size == 0 || max == 0 || text.len() <= size {
        return vec![(0, text.len())];
    }
    let lead = size / 4;
    let mut out = Vec::new();
    let mut prev_end = 0;
    let mut i = 0;
    while i < ranges.len() && out.len() < max {
        let first = ranges[i];
        let mut start = ceil_boundary(text, first[0].saturating_sub(lead).max(prev_end));
        if start > 0 && !text[..start].ends_with(char::is_whitespace) {
            // Begin after the first whitespace before the match, so no word is cut.
            if let Some(ws) = text[start..first[0]].find(char::is_whitespace) {
                start += ws;
                start += text[start..first[0]]
                    .find(|c: char| !c.is_whitespace())
                    .unwrap_or(first[0] - start);
            }
        }
        let mut end = (start + size).max(first[1]).min(text.len());
        let mut last_match_end = first[1];
        while i < ranges.len() && ranges[i][0] < end {
            end = end.max(ranges[i][1]);
            last_match_end = ranges[i][1];
            i += 1;
        }
        end = floor_boundary(text, end);
        if end < text.len() && !text[end..].starts_with(char::is_whitespace) {
            // End before the last whitespace after the last match, so no word is cut.
            if let Some(ws) = text[last_match_end..end].rfind(char::is_whitespace) {
                end = last_match_end + ws;
                end = last_match_end + text[last_match_end..end].trim_end().len();
            }
        }
        out.push((start, end));
        prev_end = end;
    }
    out
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Escapes the five characters that matter in HTML text and attribute values.
pub fn escape_html(s: &str, out: &mut String) {
    for c in s.chars() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Fields;
    use proptest::prelude::*;
    use tantivy::query::QueryParser;
    use tantivy::Index;

    fn setup() -> (Index, Fields) {
        let fields = Fields::new();
        (fields.index_builder().create_in_ram().unwrap(), fields)
    }

    fn words_of(q: &str) -> BTreeSet<String> {
        let (index, fields) = setup();
        let query = crate::query::user_query(&index, &fields, q).unwrap();
        positive_terms(&*query, &fields.msg_fields())
    }

    fn highlight(q: &str, text: &str, opts: &FragmentOptions) -> Vec<String> {
        let words = words_of(q);
        let mut tok = crate::schema::msg_tokenizer();
        fragments(text, &match_ranges(&mut tok, &words, text), opts)
    }

    fn unescape(s: &str) -> String {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    }

    #[test]
    fn negated_and_keyword_terms_are_not_marked() {
        let w = words_of("Timeout AND app:fib -retry NOT \"giving up\"");
        assert_eq!(w, BTreeSet::from(["timeout".to_string()]));
        assert!(words_of("app:fib level:error").is_empty());
    }

    #[test]
    fn a_short_message_is_one_whole_fragment() {
        let f = highlight(
            "timeout",
            "upstream Timeout after 3s.",
            &FragmentOptions::default(),
        );
        assert_eq!(f, vec!["upstream <em>Timeout</em> after 3s."]);
        // Nothing matched: no fragment.
        assert!(highlight("app:fib", "upstream timeout", &FragmentOptions::default()).is_empty());
    }

    #[test]
    fn log_text_is_escaped_and_only_the_tags_are_markup() {
        let f = highlight(
            "script",
            "<script>alert('x')</script> & \"q\"",
            &FragmentOptions::default(),
        );
        assert_eq!(
            f,
            vec!["&lt;<em>script</em>&gt;alert(&#39;x&#39;)&lt;/<em>script</em>&gt; &amp; &quot;q&quot;"]
        );
    }

    #[test]
    fn long_messages_give_fragments_in_text_order_without_cut_words() {
        let text = format!(
            "{} disk full on /var {} retry later, disk still full {} end",
            "lorem ipsum ".repeat(20),
            "dolor sit amet ".repeat(20),
            "consectetur ".repeat(20)
        );
        let opts = FragmentOptions {
            size: 60,
            max: 5,
            ..FragmentOptions::default()
        };
        let f = highlight("disk full", &text, &opts);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].contains("<em>disk</em> <em>full</em> on /var"),
            "{f:?}"
        );
        assert!(f[1].contains("<em>disk</em> still <em>full</em>"), "{f:?}");
        for frag in &f {
            let plain = unescape(&frag.replace("<em>", "").replace("</em>", ""));
            assert!(text.contains(&plain), "{plain:?}");
            // Past the size only to keep a match whole.
            assert!(plain.len() <= 60 + "full".len(), "{plain:?}");
            // Whole words at both ends.
            let at = text.find(&plain).unwrap();
            assert!(at == 0 || text[..at].ends_with(' '), "{plain:?}");
            let end = at + plain.len();
            assert!(
                end == text.len() || text[end..].starts_with(' '),
                "{plain:?}"
            );
        }
        let one = FragmentOptions { max: 1, ..opts };
        assert_eq!(highlight("disk full", &text, &one).len(), 1);
        // size 0: the whole message, every match marked.
        let whole = FragmentOptions {
            size: 0,
            ..FragmentOptions::default()
        };
        let f = highlight("disk", &text, &whole);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].matches("<em>disk</em>").count(), 2);
    }

    #[test]
    fn phrase_words_and_custom_tags() {
        let opts = FragmentOptions {
            pre_tag: "[".into(),
            post_tag: "]".into(),
            ..FragmentOptions::default()
        };
        let f = highlight("\"timed out\"", "call timed out (TIMED OUT)", &opts);
        assert_eq!(f, vec!["call [timed] [out] ([TIMED] [OUT])"]);
    }

    #[test]
    fn terms_of_an_es_style_query_on_msg_are_found() {
        let (index, fields) = setup();
        let parser = QueryParser::for_index(&index, vec![fields.msg]);
        let q = parser.parse_query("msg:refused AND NOT msg:ok").unwrap();
        assert_eq!(
            positive_terms(&*q, &fields.msg_fields()),
            BTreeSet::from(["refused".to_string()])
        );
    }

    proptest! {
        /// Whatever the text: fragments are escaped (no markup but the tags), each is
        /// a piece of the text, everything marked is a query word, and every fragment
        /// marks at least one.
        #[test]
        fn fragments_are_safe_pieces_of_the_text(
            text in "[a-zé<>&\"' ]{0,300}",
            q in "[a-z]{1,3}",
            size in 0usize..80,
            max in 0usize..4,
        ) {
            prop_assume!(!matches!(q.as_str(), "and" | "or" | "not"));
            let opts = FragmentOptions { size, max, ..FragmentOptions::default() };
            let frags = highlight(&q, &text, &opts);
            prop_assert!(frags.len() <= max.max(1));
            for f in &frags {
                let bare = f.replace("<em>", "").replace("</em>", "");
                prop_assert!(!bare.contains(['<', '>', '"', '\'']), "{}", f);
                prop_assert!(text.contains(&unescape(&bare)), "{}", f);
                let marked: Vec<&str> = f
                    .split("<em>")
                    .skip(1)
                    .map(|s| s.split("</em>").next().unwrap_or(""))
                    .collect();
                prop_assert!(!marked.is_empty(), "{}", f);
                for m in marked {
                    prop_assert_eq!(unescape(m).to_lowercase(), q.clone());
                }
            }
            let expected_some = text
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w.to_lowercase() == q);
            prop_assert_eq!(!frags.is_empty(), expected_some);
        }
    }
}
