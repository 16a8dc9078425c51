//! Queries on `msg`, whose tokens live in two fields: the words in `msg` (with
//! positions) and the ids, tokens with a digit, in `msg_ids` (documents only; see
//! `schema::MSG_IDS` for why).
//!
//! A single token is one term query on the field that holds it. A phrase of words
//! only is Tantivy's phrase query on `msg`, as before the split. A phrase with an id
//! in it cannot be matched on positions alone: its candidates are the documents with
//! the words at their relative positions (the word positions keep the gaps the ids
//! leave) and every id, and each candidate is checked against the stored message,
//! tokenised the way it was indexed. Counts, pages and aggregations see only checked
//! documents, so results stay exact. The trade-off: such a phrase reads the stored
//! message of every candidate (one store block per block of candidates, in document
//! order), which is cheap when an id in it is rare (an IP, a block id, a trace id) and
//! costs a scan of the store when every token is common (`"state 1"`).

use crate::error::{Error, Result};
use crate::schema::{self, is_id_token, Fields};
use std::sync::Arc;
use tantivy::query::{
    BooleanQuery, EnableScoring, Explanation, PhraseQuery, Query, Scorer, TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::store::StoreReader;
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{DocId, DocSet, Score, SegmentReader, TantivyDocument, Term, TERMINATED};

/// Store blocks a verifying scorer keeps decompressed: candidates come in document
/// order, so one block serves all its candidates and older blocks are not revisited.
const VERIFY_CACHE_BLOCKS: usize = 2;

/// The tokens of `text` as `msg` is indexed, with their positions.
pub fn tokens(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    tokens_into(&mut schema::msg_tokenizer(), text, &mut out);
    out
}

/// [`tokens`] into `out`, reusing its strings: the phrase check runs this on every
/// candidate's message, where a tokenizer and a string per token each time showed.
fn tokens_into(analyzer: &mut TextAnalyzer, text: &str, out: &mut Vec<(usize, String)>) {
    let mut n = 0;
    let mut stream = analyzer.token_stream(text);
    while let Some(t) = stream.next() {
        match out.get_mut(n) {
            Some((p, s)) => {
                *p = t.position;
                s.clear();
                s.push_str(&t.text);
            }
            None => out.push((t.position, t.text.clone())),
        }
        n += 1;
    }
    out.truncate(n);
}

/// The term of one token of a message, in the field that indexes it.
pub fn term(fields: &Fields, token: &str) -> Term {
    let field = if is_id_token(token) {
        fields.msg_ids
    } else {
        fields.msg
    };
    Term::from_field_text(field, token)
}

/// The exact query for one token (already tokenised) of a message.
pub fn term_query(fields: &Fields, token: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        term(fields, token),
        IndexRecordOption::Basic,
    ))
}

/// The query for a phrase of `msg` tokens (as [`tokens`] gives them) that contains at
/// least one id; `None` when it has none (Tantivy's own phrase query on `msg` is then
/// exact). `slop` as in `"a b"~2`; `prefix`: the last token is a prefix (`"a b"*`).
pub fn id_phrase(
    fields: &Fields,
    toks: &[(usize, String)],
    slop: u32,
    prefix: bool,
) -> Result<Option<Box<dyn Query>>> {
    if !toks.iter().any(|(_, t)| is_id_token(t)) {
        return Ok(None);
    }
    if prefix && toks.len() < 2 {
        return Err(Error::Index(
            "a phrase-prefix query requires at least two terms".into(),
        ));
    }
    if toks.len() == 1 {
        return Ok(Some(term_query(fields, &toks[0].1)));
    }
    let exact = if prefix {
        &toks[..toks.len() - 1]
    } else {
        toks
    };
    let words: Vec<(usize, Term)> = exact
        .iter()
        .filter(|(_, t)| !is_id_token(t))
        .map(|(p, t)| (*p, Term::from_field_text(fields.msg, t)))
        .collect();
    let mut parts: Vec<Box<dyn Query>> = Vec::new();
    if slop == 0 && words.len() >= 2 {
        // The words at their distances: a necessary condition, answered by positions.
        parts.push(Box::new(PhraseQuery::new_with_offset(words)));
    } else {
        parts.extend(
            words
                .into_iter()
                .map(|(_, t)| Box::new(TermQuery::new(t, IndexRecordOption::Basic)) as _),
        );
    }
    let mut terms = Vec::new();
    for (_, t) in exact {
        let term = term(fields, t);
        if is_id_token(t) {
            parts.push(Box::new(TermQuery::new(
                term.clone(),
                IndexRecordOption::Basic,
            )));
        }
        terms.push(term);
    }
    let candidates: Box<dyn Query> = if parts.len() == 1 {
        parts.remove(0)
    } else {
        Box::new(BooleanQuery::intersection(parts))
    };
    Ok(Some(Box::new(VerifiedPhrase {
        candidates,
        check: Arc::new(PhraseCheck {
            tokens: toks.to_vec(),
            slop,
            prefix,
        }),
        source_doc: fields.source_doc,
        terms,
    })))
}

/// What a stored message must contain to match a phrase.
#[derive(Debug)]
struct PhraseCheck {
    /// Query tokens with their positions in the query.
    tokens: Vec<(usize, String)>,
    slop: u32,
    prefix: bool,
}

impl PhraseCheck {
    fn matches_token(&self, k: usize, token: &str) -> bool {
        let want = &self.tokens[k].1;
        if self.prefix && k + 1 == self.tokens.len() {
            token.starts_with(want.as_str())
        } else {
            token == want
        }
    }

    /// Whether `msg` contains the phrase: exactly at the query's relative positions,
    /// or with slop, where the shifts of consecutive tokens from their query
    /// positions add up to at most the slop (Tantivy's sloppy phrase budget).
    fn matches(&self, toks: &[(usize, String)]) -> bool {
        let Some(last) = toks.last().map(|(p, _)| *p) else {
            return false;
        };
        let mut at: Vec<Option<&str>> = vec![None; last + 1];
        for (p, t) in toks {
            at[*p] = Some(t);
        }
        let first = self.tokens[0].0;
        if self.slop == 0 {
            return toks.iter().any(|(p, t)| {
                self.matches_token(0, t)
                    && self.tokens.iter().enumerate().skip(1).all(|(k, (q, _))| {
                        (p + q)
                            .checked_sub(first)
                            .and_then(|i| at.get(i).copied().flatten())
                            .is_some_and(|t| self.matches_token(k, t))
                    })
            });
        }
        // Cheapest total shift so far for each placement of the previous token.
        let mut best: Vec<(i64, u32)> = toks
            .iter()
            .filter(|(_, t)| self.matches_token(0, t))
            .map(|(p, _)| (*p as i64 - first as i64, 0))
            .collect();
        for (k, (q, _)) in self.tokens.iter().enumerate().skip(1) {
            let mut next = Vec::new();
            for (p, t) in toks {
                if !self.matches_token(k, t) {
                    continue;
                }
                let shifted = *p as i64 - *q as i64;
                let cost = best
                    .iter()
                    .map(|(prev, c)| c + prev.abs_diff(shifted) as u32)
                    .min();
                if let Some(c) = cost.filter(|c| *c <= self.slop) {
                    next.push((shifted, c));
                }
            }
            best = next;
        }
        !best.is_empty()
    }
}

/// How many phrase checks (each reads a stored message) pass between two looks at
/// the request's time budget.
const VERIFY_BUDGET_EVERY: u32 = 16;

/// A phrase with ids: the documents of `candidates` whose stored message passes
/// `check`.
#[derive(Debug)]
pub struct VerifiedPhrase {
    candidates: Box<dyn Query>,
    check: Arc<PhraseCheck>,
    source_doc: Field,
    /// Every exact token of the phrase in its field, for highlighting.
    terms: Vec<Term>,
}

impl Clone for VerifiedPhrase {
    fn clone(&self) -> Self {
        VerifiedPhrase {
            candidates: self.candidates.box_clone(),
            check: self.check.clone(),
            source_doc: self.source_doc,
            terms: self.terms.clone(),
        }
    }
}

impl Query for VerifiedPhrase {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(VerifiedWeight {
            candidates: self.candidates.weight(scoring)?,
            check: self.check.clone(),
            source_doc: self.source_doc,
            // Taken here, on the request's thread: the scorers run on the pool's.
            budget: crate::budget::current(),
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        for t in &self.terms {
            visitor(t, !is_id_token(t.value().as_str().unwrap_or_default()));
        }
    }
}

struct VerifiedWeight {
    candidates: Box<dyn Weight>,
    check: Arc<PhraseCheck>,
    source_doc: Field,
    budget: Option<Arc<crate::budget::Budget>>,
}

impl Weight for VerifiedWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let inner = self.candidates.scorer(reader, boost)?;
        let store = reader.get_store_reader(VERIFY_CACHE_BLOCKS)?;
        let mut scorer = VerifiedScorer {
            inner,
            store,
            check: self.check.clone(),
            source_doc: self.source_doc,
            analyzer: schema::msg_tokenizer(),
            toks: Vec::new(),
            ticker: crate::budget::Ticker::new(self.budget.clone(), VERIFY_BUDGET_EVERY),
        };
        let doc = scorer.inner.doc();
        if doc != TERMINATED && !scorer.ticker.over() && !scorer.verified(doc) {
            scorer.advance();
        }
        Ok(Box::new(scorer))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut scorer = self.scorer(reader, 1.0)?;
        if scorer.seek(doc) != doc {
            return Err(tantivy::TantivyError::InvalidArgument(format!(
                "document {doc} does not match the phrase"
            )));
        }
        Ok(Explanation::new("verified phrase", scorer.score()))
    }
}

struct VerifiedScorer {
    inner: Box<dyn Scorer>,
    store: StoreReader,
    check: Arc<PhraseCheck>,
    source_doc: Field,
    analyzer: TextAnalyzer,
    /// The tokens of the message last checked (buffers reused).
    toks: Vec<(usize, String)>,
    /// One `advance` may read every stored message of a segment (common words,
    /// rare phrase), so the request's budget is looked at inside the loop too: the
    /// wrapper around the whole query only sees the calls that return.
    ticker: crate::budget::Ticker,
}

impl VerifiedScorer {
    fn verified(&mut self, doc: DocId) -> bool {
        let msg = self
            .store
            .get::<TantivyDocument>(doc)
            .map_err(Error::from)
            .and_then(|d| {
                let bytes = d
                    .get_first(self.source_doc)
                    .and_then(|v| v.as_bytes())
                    .ok_or_else(|| Error::Index(format!("stored document {doc} has no msg")))?;
                tokens_into(
                    &mut self.analyzer,
                    &schema::stored_msg(bytes)?,
                    &mut self.toks,
                );
                Ok(self.check.matches(&self.toks))
            });
        match msg {
            Ok(m) => m,
            Err(e) => {
                // A document that cannot be read cannot be shown either; the phrase
                // answers without it rather than failing the whole search.
                tracing::warn!(doc, error = %e, "phrase check skipped an unreadable document");
                false
            }
        }
    }
}

impl DocSet for VerifiedScorer {
    fn advance(&mut self) -> DocId {
        loop {
            if self.ticker.over() {
                return TERMINATED;
            }
            let doc = self.inner.advance();
            if doc == TERMINATED || self.verified(doc) {
                return doc;
            }
        }
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if self.ticker.over() {
            return TERMINATED;
        }
        let doc = self.inner.seek(target);
        if doc == TERMINATED || self.verified(doc) {
            return doc;
        }
        self.advance()
    }

    fn doc(&self) -> DocId {
        if self.ticker.ended() {
            TERMINATED
        } else {
            self.inner.doc()
        }
    }

    fn size_hint(&self) -> u32 {
        self.inner.size_hint()
    }
}

impl Scorer for VerifiedScorer {
    fn score(&mut self) -> Score {
        self.inner.score()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::user_query;
    use protocol::{LogRecord, Stream, TaskMeta};
    use tantivy::collector::{Count, DocSetCollector};
    use tantivy::Index;

    const MSGS: [&str; 7] = [
        "Receiving block blk_-1608999687919862906 src: /10.250.19.102:50010",
        "connection from 10.250.19.103 port 22",
        // Every token of 10.250.19.102, in another order: a candidate of the IP's
        // id conjunction that only the check against the message rejects.
        "connection from 102.19.250.10 port 10250",
        "mod_jk child workerEnv in error state 6",
        "state 6 error in mod_jk child",
        "Connection timed out after 30 s",
        "request timed out",
    ];

    fn index() -> (Index, Fields) {
        let fields = Fields::new();
        let index = fields.index_builder().create_in_ram().unwrap();
        let mut w: tantivy::IndexWriter = index.writer(15 << 20).unwrap();
        let meta = TaskMeta {
            host: "node-1".into(),
            app: "hdfs".into(),
            task: "hdfs.1".into(),
            instance: 0,
            ports: vec![],
        };
        let ts = "2026-11-23T10:00:00Z".parse().unwrap();
        for (i, m) in MSGS.iter().enumerate() {
            let rec = LogRecord::new(ts, &meta, Stream::Stdout, *m);
            w.add_document(fields.to_document(&rec, i as u64)).unwrap();
        }
        w.commit().unwrap();
        (index, fields)
    }

    /// The messages `q` finds, and its count.
    fn find(index: &Index, fields: &Fields, q: &str) -> Vec<&'static str> {
        let query = user_query(index, fields, q).unwrap();
        let searcher = index.reader().unwrap().searcher();
        let count = searcher.search(&*query, &Count).unwrap();
        let mut docs: Vec<_> = searcher
            .search(&*query, &DocSetCollector)
            .unwrap()
            .into_iter()
            .collect();
        docs.sort();
        assert_eq!(count, docs.len(), "count of {q}");
        docs.into_iter().map(|d| MSGS[d.doc_id as usize]).collect()
    }

    #[test]
    fn id_tokens_are_found_exactly_in_msg() {
        let (index, fields) = index();
        assert_eq!(find(&index, &fields, "1608999687919862906"), [MSGS[0]]);
        assert_eq!(find(&index, &fields, "msg:50010"), [MSGS[0]]);
        assert_eq!(find(&index, &fields, "blk_-1608999687919862906"), [MSGS[0]]);
        assert_eq!(find(&index, &fields, "10.250.19.102"), [MSGS[0]]);
        assert_eq!(find(&index, &fields, "10.250.19.103"), [MSGS[1]]);
        assert_eq!(find(&index, &fields, "10250"), [MSGS[2]]);
        assert!(find(&index, &fields, "1608999687919862907").is_empty());
        // Words still go to the positional field.
        assert_eq!(find(&index, &fields, "block"), [MSGS[0]]);
    }

    #[test]
    fn phrases_with_numbers_match_at_their_positions_only() {
        let (index, fields) = index();
        assert_eq!(
            find(&index, &fields, "\"connection from 10.250.19.103 port 22\""),
            [MSGS[1]]
        );
        assert_eq!(find(&index, &fields, "\"error state 6\""), [MSGS[3]]);
        assert_eq!(find(&index, &fields, "\"state 6 error\""), [MSGS[4]]);
        assert_eq!(find(&index, &fields, "\"after 30 s\""), [MSGS[5]]);
        assert!(find(&index, &fields, "\"after 31 s\"").is_empty());
        // Words of a phrase without ids: Tantivy's own phrase query, unchanged.
        assert_eq!(find(&index, &fields, "\"timed out\""), [MSGS[5], MSGS[6]]);
        // In boolean structure, negated, and fielded.
        assert_eq!(
            find(&index, &fields, "connection AND -\"from 10.250.19.103\""),
            [MSGS[2], MSGS[5]]
        );
        assert_eq!(
            find(&index, &fields, "msg:\"state 6\" AND child"),
            [MSGS[3], MSGS[4]]
        );
    }

    /// Review finding (issue 15): one `advance` of the phrase check may read every
    /// stored message of a segment, and the budget's wrapper only sees the calls
    /// that return; the check loop looks at the budget itself.
    #[test]
    fn the_phrase_check_stops_at_a_spent_budget() {
        let (index, fields) = index();
        let query = user_query(&index, &fields, "\"state 6\"").unwrap();
        let searcher = index.reader().unwrap().searcher();
        let ample = crate::budget::Budget::new(std::time::Duration::from_secs(60));
        let found = crate::budget::with_budget(&ample, || searcher.search(&*query, &Count));
        assert_eq!(found.unwrap(), 2);
        assert!(!ample.spent());
        let spent = crate::budget::Budget::new(std::time::Duration::ZERO);
        let found = crate::budget::with_budget(&spent, || searcher.search(&*query, &Count));
        assert_eq!(
            found.unwrap(),
            0,
            "no stored message read once the budget is spent"
        );
        assert!(spent.spent());
    }

    #[test]
    fn phrase_false_positives_are_rejected_by_the_stored_message() {
        let (index, fields) = index();
        // Every token of the IP is in MSGS[2] too, and "from ... port" around it.
        assert_eq!(
            find(&index, &fields, "\"from 10.250.19.102 port\""),
            Vec::<&str>::new()
        );
        assert_eq!(find(&index, &fields, "\"102.19.250.10\""), [MSGS[2]]);
        // MSGS[3] and MSGS[4] hold the same tokens; order decides.
        assert_eq!(find(&index, &fields, "\"6 error\""), [MSGS[4]]);
    }

    #[test]
    fn sloppy_and_prefix_phrases_with_ids() {
        let (index, fields) = index();
        assert_eq!(find(&index, &fields, "\"error 6\"~1"), [MSGS[3]]);
        assert!(find(&index, &fields, "\"error 6\"").is_empty());
        assert_eq!(find(&index, &fields, "\"blk 16089\"*"), [MSGS[0]]);
        assert_eq!(find(&index, &fields, "\"port 102\"*"), [MSGS[2]]);
    }

    #[test]
    fn ids_and_words_of_a_query_are_highlighted() {
        let (index, fields) = index();
        let q = user_query(&index, &fields, "\"from 10.250.19.103\" AND port").unwrap();
        let words = crate::highlight::positive_terms(&*q, &fields.msg_fields());
        let mut tok = schema::msg_tokenizer();
        let ranges = crate::highlight::match_ranges(&mut tok, &words, MSGS[1]);
        let marked: Vec<&str> = ranges.iter().map(|r| &MSGS[1][r[0]..r[1]]).collect();
        assert_eq!(marked, ["from", "10", "250", "19", "103", "port"]);
    }
}
