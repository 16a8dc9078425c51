//! A real NATS server with JetStream (Debian's `nats-server` 2.9, installed by
//! scripts/test-deps.sh) for the ingest-log suites: `nats-server -js -a 127.0.0.1
//! -p PORT -sd TMPDIR` on a free port, awaited until its monitoring endpoint says
//! it is healthy (JetStream included), killed when dropped. [`Nats::stop`] and
//! [`Nats::start_again`] keep the store dir, so a test can take the log away and
//! bring it back with everything it held.
#![allow(dead_code)] // only the ingest-log suites start a NATS server

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NATS_SERVER: &str = "nats-server";

pub struct Nats {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    monitor: u16,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Nats {
    pub fn start() -> anyhow::Result<Nats> {
        let mut nats = Nats {
            child: None,
            dir: tempfile::tempdir()?,
            port: free_port()?,
            monitor: free_port()?,
        };
        nats.start_again()?;
        Ok(nats)
    }

    /// Starts the server (again) on the same port and store dir.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let child = Command::new(NATS_SERVER)
            .args(["-js", "-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .arg("-sd")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("starting {NATS_SERVER}: run scripts/test-deps.sh (Debian nats-server)")
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.healthy() {
            if Instant::now() > deadline {
                bail!(
                    "nats-server on port {} was not healthy within 30 s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills the server, keeping its store.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `GET /healthz` on the monitoring port answers `{"status":"ok"}` once
    /// JetStream is up.
    fn healthy(&self) -> bool {
        let ask = || -> std::io::Result<bool> {
            let mut s = TcpStream::connect(("127.0.0.1", self.monitor))?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"))
        };
        ask().unwrap_or(false)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
