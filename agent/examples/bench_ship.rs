//! `sandtrail bench ship` without the rest of the workspace:
//! `cargo run --release -p agent --features bench --example bench_ship --
//! [CORPUS_TXT [FILES [IDLE_SECS]]]`.
//! Run with `sink` as the only argument, it is the benchmark's indexer sink.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("sink") {
        return Ok(agent::bench::sink_main()?);
    }
    let mut opts = agent::bench::BenchOptions {
        sink_command: vec![args[0].clone(), "sink".into()],
        ..Default::default()
    };
    if let Some(c) = args.get(1) {
        opts.corpus = c.into();
    }
    if let Some(f) = args.get(2) {
        opts.files = f.parse()?;
    }
    if let Some(s) = args.get(3) {
        opts.idle_secs = s.parse()?;
    }
    let report = agent::bench::run(opts)?;
    print!("{}", report.to_markdown());
    Ok(())
}
