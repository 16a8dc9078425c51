//! A real ZooKeeper (Debian's `zookeeperd`, 3.8, installed by scripts/test-deps.sh)
//! for the HA suites: `zkServer.sh start-foreground CFG` on a free 127.0.0.1 port with
//! a tempdir dataDir, awaited until it answers `ruok`, killed when dropped.
//!
//! The tick is short (100 ms) so session timeouts as low as 400 ms are granted: the
//! failover tests then take seconds, not minutes.
#![allow(dead_code)] // only the HA suites start a ZooKeeper

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ZK_SERVER: &str = "/usr/share/zookeeper/bin/zkServer.sh";

pub struct ZooKeeper {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl ZooKeeper {
    pub fn start() -> anyhow::Result<ZooKeeper> {
        if !std::path::Path::new(ZK_SERVER).exists() {
            bail!("{ZK_SERVER} is missing: run scripts/test-deps.sh (Debian zookeeperd)");
        }
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cfg = dir.path().join("zoo.cfg");
        std::fs::create_dir(dir.path().join("data"))?;
        std::fs::write(
            &cfg,
            format!(
                "tickTime=100\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\nminSessionTimeout=400\nmaxSessionTimeout=60000\n\
                 4lw.commands.whitelist=ruok\n",
                dir.path().join("data").display()
            ),
        )?;
        // zkServer.sh execs java, so the child is the server itself.
        let child = Command::new(ZK_SERVER)
            .arg("start-foreground")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {ZK_SERVER}"))?;
        let zk = ZooKeeper {
            child,
            _dir: dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !zk.ruok() {
            if Instant::now() > deadline {
                bail!("zookeeper on port {port} did not answer ruok within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(zk)
    }

    fn ruok(&self) -> bool {
        let ask = || -> std::io::Result<bool> {
            let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"ruok")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer == "imok")
        };
        ask().unwrap_or(false)
    }

    /// Kills the server (SIGKILL), as a crash or a partition from it would look to
    /// its clients.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `zk://127.0.0.1:PORT/ROOT`.
    pub fn url(&self, root: &str) -> String {
        format!("zk://127.0.0.1:{}/{root}", self.port)
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
