//! A PostgreSQL cluster of a test's own (initdb in a temporary directory, a free loopback
//! port), so that a test may crash and restart it without touching anyone else's database.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{free_port, unique};

/// A private PostgreSQL cluster; stopped and removed on drop.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

fn bindir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql/<version>/bin")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL server in /usr/lib/postgresql")
}

/// Runs a server binary as `postgres` when this process is root (PostgreSQL refuses root).
fn as_owner(program: &Path) -> Command {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl PrivatePostgres {
    /// initdb, then start; waits until it accepts connections.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("sy-pg-"));
        std::fs::create_dir_all(&dir).unwrap();
        // Owned by `postgres` when run as root, so that the server may write there.
        let _ = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status();
        let bin = bindir();
        let status = as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--auth=trust",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        // fsync off: a crash of the server process (not of the machine) loses nothing, since
        // the WAL is in the kernel's page cache. synchronous_commit stays on: with it off, a
        // commit is acknowledged before its WAL is even written, and a crash loses it.
        let conf = "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 200\nfsync = off\n";
        let path = dir.join("data/postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(conf);
        std::fs::write(&path, text).unwrap();
        let pg = Self {
            dir,
            bin,
            port: free_port(),
        };
        pg.ctl(&["start", "-w", "-t", "60"]);
        pg.wait_ready().await;
        pg
    }

    fn ctl(&self, args: &[&str]) {
        let status = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-o", &format!("-p {}", self.port), "-l"])
            .arg(self.dir.join("log"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    async fn wait_ready(&self) {
        use sqlx::Connection as _;
        for _ in 0..300 {
            if sqlx::PgConnection::connect(&self.url("postgres"))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the private PostgreSQL on port {} never came up", self.port);
    }

    /// The URL of `database` on it (user `postgres`, trusted on loopback).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database.
    pub async fn create_database(&self, name: &str) -> String {
        use sqlx::{Connection as _, Executor as _};
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        self.url(name)
    }

    /// A crash and a restart: `pg_ctl stop -m immediate` (no checkpoint; recovery from the
    /// WAL at start), then start again on the same port.
    pub async fn crash_and_restart(&self) {
        self.ctl(&["stop", "-m", "immediate", "-w"]);
        self.ctl(&["start", "-w", "-t", "60"]);
        self.wait_ready().await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["stop", "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
