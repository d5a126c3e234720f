//! Test-only helpers. Tests talk to real services: the machine's PostgreSQL (`DATABASE_URL`,
//! one database per test through `#[sqlx::test]`) and nats-server — the shared one
//! (`NATS_URL`) with a unique stream and subject prefix per test, or, for tests that kill or
//! restart it, a [`NatsServer`] of their own on a free loopback port with its own store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers for tests: fail loudly

mod github;
mod postgres;

pub use github::{Attempt, GitHubStandIn, Repo, post_delivery, sign};
pub use postgres::PrivatePostgres;

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The shared nats-server (`NATS_URL`, default `nats://127.0.0.1:4222`).
pub fn shared_nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A name no other test uses: a JetStream stream name or subject prefix (`t` + 12 hex).
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &id[..12])
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL database of its own for a test binary or a benchmark that does not use
/// `#[sqlx::test]` (which makes its own): created on the server of `DATABASE_URL` (a role with
/// CREATEDB), dropped by [`TempDatabase::drop_now`].
#[derive(Debug)]
pub struct TempDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TempDatabase {
    /// Creates `<prefix>_<random>` next to `DATABASE_URL`'s database.
    pub async fn create(prefix: &str) -> Self {
        use sqlx::{Connection, Executor};
        let admin_url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must be set (scripts/test and scripts/up print one)");
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let (base, query) = admin_url
            .split_once('?')
            .map_or((admin_url.as_str(), None), |(b, q)| (b, Some(q)));
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        let url = match query {
            Some(q) => format!("{server}/{name}?{q}"),
            None => format!("{server}/{name}"),
        };
        Self {
            admin_url,
            name,
            url,
        }
    }

    /// Its connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool of up to `max` connections to it.
    pub async fn pool(&self, max: u32) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(max)
            .connect(&self.url)
            .await
            .unwrap()
    }

    /// Drops it, disconnecting whoever is still connected.
    pub async fn drop_now(self) {
        use sqlx::{Connection, Executor};
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .unwrap();
    }
}

/// A nats-server with JetStream of a test's own: its own port and store directory, so that a
/// test may kill, stop and restart it without touching anyone else. Killed on drop; its store
/// directory is removed.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one and waits until it accepts connections.
    pub async fn start() -> Self {
        let store = std::env::temp_dir().join(unique("sy-nats-"));
        std::fs::create_dir_all(&store).unwrap();
        let mut server = Self {
            port: free_port(),
            store,
            child: None,
        };
        server.restart().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server (its store stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process is frozen, its connections stay open and unanswered.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after [`NatsServer::pause`].
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        signal_child(self.child.as_ref(), signal);
    }

    /// Starts the server again on the same port and store (after [`NatsServer::kill`]).
    pub async fn restart(&mut self) {
        self.kill();
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if async_nats::connect(self.url()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "nats-server on port {} did not come up within 5 s",
            self.port
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A three-node nats-server cluster with JetStream on loopback ports, each node with its own
/// store directory, so that a test may kill a node, wipe its store and bring it back. Killed on
/// drop; its directories are removed.
#[derive(Debug)]
pub struct NatsCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    routes: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream has a leader.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("sy-natsc-"));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut cluster = Self {
            dir,
            ports,
            routes,
            children: vec![None, None, None],
        };
        for node in 0..3 {
            cluster.write_config(node);
            cluster.spawn(node);
        }
        cluster.wait_for_jetstream().await;
        cluster
    }

    fn write_config(&self, node: usize) {
        let routes: Vec<String> = self
            .routes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != node)
            .map(|(_, p)| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let config = format!(
            "server_name: n{node}\nlisten: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n}}\ncluster {{\n  name: sy\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
            self.ports[node],
            self.store(node),
            self.routes[node],
            routes.join(", ")
        );
        std::fs::write(self.dir.join(format!("n{node}.conf")), config).unwrap();
    }

    fn store(&self, node: usize) -> PathBuf {
        self.dir.join(format!("store-{node}"))
    }

    fn spawn(&mut self, node: usize) {
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(binary)
            .arg("-c")
            .arg(self.dir.join(format!("n{node}.conf")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/test installs it)");
        self.children[node] = Some(child);
    }

    async fn wait_for_jetstream(&self) {
        for _ in 0..300 {
            if let Ok(client) = async_nats::connect(self.urls()).await {
                let js = async_nats::jetstream::new(client);
                // A stream created and deleted: the meta leader answers. (Account info does
                // not parse against a 2.9 cluster's answer.)
                let probe = js
                    .create_stream(async_nats::jetstream::stream::Config {
                        name: "SYPROBE".into(),
                        subjects: vec!["syprobe".into()],
                        storage: async_nats::jetstream::stream::StorageType::Memory,
                        num_replicas: 3,
                        ..Default::default()
                    })
                    .await;
                if probe.is_ok() && js.delete_stream("SYPROBE").await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the JetStream cluster never elected a leader");
    }

    /// Every node's URL, comma-separated (what `NATS_URL` takes).
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect()
    }

    /// SIGKILLs one node (its store stays).
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP one node; [`NatsCluster::resume`] sends SIGCONT.
    pub fn pause(&self, node: usize) {
        signal_child(
            self.children[node].as_ref(),
            nix::sys::signal::Signal::SIGSTOP,
        );
    }

    /// SIGCONT after [`NatsCluster::pause`].
    pub fn resume(&self, node: usize) {
        signal_child(
            self.children[node].as_ref(),
            nix::sys::signal::Signal::SIGCONT,
        );
    }

    /// Starts a killed node again; with `wipe`, its store directory is removed first, so it
    /// must catch up from its peers.
    pub async fn restart(&mut self, node: usize, wipe: bool) {
        self.kill(node);
        if wipe {
            let _ = std::fs::remove_dir_all(self.store(node));
        }
        self.spawn(node);
        self.wait_for_jetstream().await;
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in 0..3 {
            self.kill(node);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal_child(child: Option<&Child>, signal: nix::sys::signal::Signal) {
    if let Some(child) = child {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }
}
