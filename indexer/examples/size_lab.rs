//! Where the index bytes go, per field and per component (term dictionary, postings,
//! positions, fast columns, doc store), for the current schema on the first N records
//! of a corpus:
//! `cargo run --release -p indexer --features bench --example size_lab -- N NDJSON DIR`.
//! The trade-off: one plain `IndexWriter` loop and one commit (no HTTP, no freshness,
//! no searches), so it answers "what does this schema cost" in seconds, not how fast
//! our ingest is; `sandtrail bench ingest` remains the figure of record.

use std::collections::BTreeMap;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1_000_000), |n| n.parse())?;
    let ndjson = std::path::PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/tmp/sandtrail-bench/corpus-10000000.ndjson".into()),
    );
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/st-lab/ix".into()));
    // Doc store variants without a rebuild: zstd level and block size (KiB).
    let mut settings = indexer::schema::index_settings();
    if let Some(level) = args.next() {
        settings.docstore_compression =
            tantivy::store::Compressor::Zstd(tantivy::store::ZstdCompressor {
                compression_level: Some(level.parse()?),
            });
    }
    if let Some(kib) = args.next() {
        settings.docstore_blocksize = kib.parse::<usize>()? * 1024;
    }
    let records = indexer::bench::load_corpus(&ndjson, n)?;
    let raw: u64 = {
        use std::io::BufRead;
        let f = std::fs::File::open(ndjson.with_extension("txt"))?;
        std::io::BufReader::new(f)
            .lines()
            .take(records.len())
            .map_while(|l| l.ok())
            .map(|l| l.len() as u64 + 1)
            .sum()
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let fields = indexer::schema::Fields::new();
    let index = fields
        .index_builder()
        .settings(settings)
        .create_in_dir(&dir)?;
    if std::env::var("SIZE_LAB_TOKENS").as_deref() == Ok("nodigits") {
        // What-if only (not a supported schema): text tokens that contain a digit (the
        // ids of `msg_ids`) are not indexed at all, to bound what they cost.
        use tantivy::tokenizer::{RemoveLongFilter, SimpleTokenizer, TextAnalyzer};
        let nothing = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(0))
            .build();
        index
            .tokenizers()
            .register(indexer::schema::MSG_IDS_TOKENIZER, nothing);
    }
    let started = Instant::now();
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(2, 128 << 20)?;
    for (i, rec) in records.iter().enumerate() {
        writer.add_document(fields.to_document(rec, i as u64))?;
    }
    writer.commit()?;
    let secs = started.elapsed().as_secs_f64();
    writer.wait_merging_threads()?;
    let searcher = index.reader()?.searcher();
    // Hit fetch cost, cold store cache each time (a new reader): the 100 newest docs
    // of the last segment (neighbours, as newest-first hits mostly are), and 100 docs
    // spread over the whole index (each in its own block: the worst case).
    let fetch = |spread: bool| -> Result<f64, Box<dyn std::error::Error>> {
        let mut times = Vec::new();
        for _ in 0..15 {
            let s = index.reader()?.searcher();
            let t = Instant::now();
            let segs = s.segment_readers();
            let mut records = indexer::schema::RecordReader::new(&fields);
            for k in 0..100u32 {
                let (ord, doc) = if spread {
                    let ord = k as usize % segs.len();
                    let max = segs[ord].max_doc();
                    (ord, (k.wrapping_mul(7919)) % max)
                } else {
                    let ord = segs.len() - 1;
                    (ord, segs[ord].max_doc() - 1 - k)
                };
                let d: tantivy::TantivyDocument =
                    s.doc(tantivy::DocAddress::new(ord as u32, doc))?;
                records.read(&d, ord as u32, &segs[ord], doc)?;
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };
    println!(
        "fetch 100 hits, median of 15 cold readers: newest {:.2} ms, spread {:.2} ms",
        fetch(false)?,
        fetch(true)?
    );
    let usage = searcher.space_usage()?;
    let mut by: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for seg in usage.segments() {
        let parts = [
            ("term", seg.termdict()),
            ("idx", seg.postings()),
            ("pos", seg.positions()),
            ("fast", seg.fast_fields()),
            ("norm", seg.fieldnorms()),
        ];
        for (kind, per) in parts {
            for u in per.fields() {
                let name = u.field_name().to_string();
                *by.entry((name, kind)).or_default() += u.total().get_bytes();
            }
        }
        *by.entry(("(all)".into(), "store")).or_default() += seg.store().total().get_bytes();
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "{} records, raw {:.1} MiB, indexed in {secs:.1} s, {} segments, total {:.1} MiB = {:.3} of raw",
        records.len(),
        mib(raw),
        usage.segments().len(),
        mib(usage.total().get_bytes()),
        usage.total().get_bytes() as f64 / raw as f64
    );
    let mut rows: Vec<_> = by.into_iter().filter(|(_, b)| *b > 0).collect();
    rows.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
    for ((field, kind), b) in rows {
        println!(
            "{field:>16} {kind:>5} {:>9.2} MiB {:.4} of raw",
            mib(b),
            b as f64 / raw as f64
        );
    }
    Ok(())
}
