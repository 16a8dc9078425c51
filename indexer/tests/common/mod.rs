//! The indexer served on 127.0.0.1:0 over a temporary directory, shared by the HTTP
//! test files (each adds the request helpers it needs in its own `impl Server`).

use anyhow::Result;
use indexer::{router, Indexer, IndexerConfig};

pub struct Server {
    pub base: String,
    #[allow(dead_code)] // not every test file looks at the indexer directly
    pub indexer: Indexer,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A fresh indexer with a small writer budget, its router on a free port.
pub async fn serve(token: Option<&str>, max_body_bytes: usize) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let indexer = Indexer::open(IndexerConfig {
        data_dir: dir.path().to_path_buf(),
        token: token.map(String::from),
        max_body_bytes,
        writer_memory_bytes: 32 << 20,
        ..IndexerConfig::default()
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = router(indexer.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Server {
        base,
        indexer,
        http: reqwest::Client::new(),
        _dir: dir,
    })
}
