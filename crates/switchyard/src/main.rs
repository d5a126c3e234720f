//! `switchyard`: the event-sourced control plane for software-development agents.

mod settings;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret as _;
use sqlx::{PgPool, postgres::PgPoolOptions};
use switchyard_events::Catalog;
use switchyard_http_api::{AppState, bootstrap_admin_token, router};
use switchyard_store::{EventStore, MIGRATOR};
use tokio::net::TcpListener;

use settings::{LogFormat, Settings};

/// Switchyard: agents cooperate through versioned events, stored in PostgreSQL and delivered
/// through NATS JetStream.
///
/// Configuration comes from config/default.toml (compiled in), an optional file, and the
/// environment: DATABASE_URL, NATS_URL, SWITCHYARD_ADMIN_TOKEN, SWITCHYARD_EVENTS_DIR and
/// SWITCHYARD_<KEY> (`__` nests, e.g. SWITCHYARD_STORE__WRITERS=4).
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about)]
struct Cli {
    /// A TOML file layered over the defaults.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: applies pending migrations, then serves the HTTP API.
    Serve {
        /// Address to listen on (overrides `listen`); port 0 picks a free port.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_ref())?;
    init_logging(&settings);
    match cli.command {
        Command::Migrate => {
            let pool = connect(&settings).await?;
            migrate(&pool).await
        }
        Command::Serve { listen } => serve(settings, listen).await,
    }
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Connects to PostgreSQL, waiting up to `connect_timeout_secs` for it to come up.
async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let url = settings.database.url.expose_secret();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(settings.database.connect_timeout_secs);
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(settings.database.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "PostgreSQL is not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(e).context(
                    "cannot connect to PostgreSQL (set DATABASE_URL, or run scripts/up to start one)",
                );
            }
        }
    }
}

async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    tracing::info!(applied, "database schema is up to date");
    Ok(())
}

async fn serve(settings: Settings, listen: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let catalog =
        Catalog::load(settings.events_dir.as_deref()).context("loading the event catalog")?;
    tracing::info!(types = catalog.len(), "event catalog loaded");

    let pool = connect(&settings).await?;
    migrate(&pool).await?;
    match &settings.admin_token {
        Some(token) => bootstrap_admin_token(&pool, token.expose_secret()).await?,
        None => tracing::warn!(
            "SWITCHYARD_ADMIN_TOKEN is not set: no admin token was installed, and the API \
             accepts only tokens already in the database"
        ),
    }

    // NATS is needed for delivery, not for accepting events: connect in the background and
    // report its state through /readyz.
    let nats = async_nats::ConnectOptions::new()
        .name("switchyard")
        .retry_on_initial_connect()
        .connect(settings.nats.url.as_str())
        .await
        .with_context(|| format!("invalid NATS_URL {}", settings.nats.url))?;

    let store = EventStore::new(pool, Arc::new(catalog), &settings.store);
    let app = router(AppState::new(store, Some(nats), settings.api.clone()));

    let address = listen.unwrap_or(settings.listen);
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let bound = listener.local_addr()?;
    // Scripts and tests read this line to find the port.
    println!("switchyard listening on http://{bound}");
    tracing::info!(%bound, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: draining requests");
}
