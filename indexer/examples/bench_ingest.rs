//! `sandtrail bench ingest` without the rest of the workspace:
//! `cargo run --release -p indexer --features bench --example bench_ingest -- RECORDS [NDJSON]`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let records = args.next().map_or(Ok(200_000), |n| n.parse())?;
    let ndjson = args.next().map(std::path::PathBuf::from);
    let report = indexer::bench::run(indexer::bench::BenchOptions {
        records,
        ndjson,
        ..Default::default()
    })
    .await?;
    print!("{}", report.to_markdown());
    Ok(())
}
