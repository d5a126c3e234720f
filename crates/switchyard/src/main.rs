//! `switchyard`: the event-sourced control plane for software-development agents.

mod catalog;
mod cli;
mod ops;
mod output;
mod settings;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret as _;
use sqlx::{Connection as _, PgPool};
use switchyard_agent_runtime::AgentRuntime;
use switchyard_events::Catalog;
use switchyard_http_api::{AgentBus, AppState, WebhookSecret, bootstrap_admin_token, router};
use switchyard_projections::ProjectionRunner;
use switchyard_relay::Relay;
use switchyard_store::{EventStore, MIGRATOR};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use output::Output;
use settings::{LogFormat, Settings};

/// Switchyard: agents cooperate through versioned events, stored in PostgreSQL and delivered
/// through NATS JetStream.
///
/// Configuration comes from config/default.toml (compiled in), an optional file, and the
/// environment: DATABASE_URL, NATS_URL, SWITCHYARD_ADMIN_TOKEN, SWITCHYARD_EVENTS_DIR and
/// SWITCHYARD_<KEY> (`__` nests, e.g. SWITCHYARD_STORE__WRITERS=4).
///
/// Exit codes: 0 done, 1 failed, 2 usage, 3 not found, 4 conflict, 5 unavailable
/// (PostgreSQL, NATS or GitHub cannot be reached); see docs/cli.md.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about)]
struct Cli {
    /// A TOML file layered over the defaults.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// How to print results: `text` for people, `json` for scripts (errors too, on stderr).
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t = Output::Text,
        env = "SWITCHYARD_OUTPUT"
    )]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: applies pending migrations, then serves the HTTP API, the relay, the
    /// agents and the projections. Prints `switchyard listening on http://ADDR` when ready.
    ///
    /// Example: `DATABASE_URL=postgres://… NATS_URL=nats://127.0.0.1:4222 switchyard serve --listen 127.0.0.1:8080`
    Serve {
        /// Address to listen on (overrides `listen`); port 0 picks a free port.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Apply pending database migrations and exit.
    ///
    /// Example: `DATABASE_URL=postgres://… switchyard migrate`
    Migrate,
    /// Check the configuration (file, environment) and the artifact contracts against the
    /// agents, without connecting to anything; prints what it checked.
    ///
    /// Example: `SWITCHYARD_CONFIG=/etc/switchyard/switchyard.toml switchyard check-config`
    CheckConfig,
    /// Inspect or rebuild projections.
    ///
    /// Example: `switchyard projections status`
    Projections {
        #[command(subcommand)]
        command: ProjectionCommand,
    },
    /// List, show, approve or reject proposals (works on the database directly: the same
    /// decisions and events as the API, recorded with channel `cli`).
    ///
    /// Example: `switchyard proposals -w demo list --status pending`
    Proposals {
        /// The workspace.
        #[arg(long, short, env = "SWITCHYARD_WORKSPACE", default_value = "demo")]
        workspace: String,
        #[command(subcommand)]
        command: cli::ProposalCommand,
    },
    /// Start a retrospective now (a `retrospective.trigger.v1` with reason `manual`, requested
    /// by `cli`), on the database directly; the retrospective agent answers it. Prints its id.
    ///
    /// Example: `switchyard retro -w demo --from 2026-12-01T00:00:00Z`
    Retro {
        /// The workspace.
        #[arg(long, short, env = "SWITCHYARD_WORKSPACE", default_value = "demo")]
        workspace: String,
        /// Start of the period (RFC 3339); default: the end of the previous retrospective.
        #[arg(long, value_name = "TIME")]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// End of the period (RFC 3339); default: now. Needs --from.
        #[arg(long, value_name = "TIME", requires = "from")]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Its id; default: a new UUIDv7.
        #[arg(long)]
        id: Option<String>,
    },
    /// Events as they are stored.
    ///
    /// Example: `switchyard events tail -w demo --type git.commit.v1`
    Events {
        #[command(subcommand)]
        command: cli::EventCommand,
    },
    /// Create, list and revoke API tokens (on the database directly).
    ///
    /// Example: `switchyard tokens list -w demo`
    Tokens {
        #[command(subcommand)]
        command: cli::TokenCommand,
    },
    /// GitHub: redeliver webhook deliveries that never reached this server.
    ///
    /// Example: `SWITCHYARD_GITHUB__TOKEN=… switchyard github catch-up --hours 24`
    Github {
        #[command(subcommand)]
        command: GithubCommand,
    },
    /// The event catalog: every type with its JSON Schema, as a list or an AsyncAPI 3
    /// document of the NATS subjects the relay publishes.
    ///
    /// Example: `switchyard catalog asyncapi > asyncapi.json`
    Catalog {
        #[command(subcommand)]
        command: catalog::CatalogCommand,
    },
    /// The HTTP API as an OpenAPI 3.1 document (what `GET /openapi.json` serves), without a
    /// server or a database.
    ///
    /// Example: `switchyard openapi > openapi.json`
    Openapi,
}

#[derive(Debug, Subcommand)]
enum GithubCommand {
    /// Ask GitHub for the recent deliveries of every hook that points at
    /// `/v1/github/webhook` (on the repositories of GitHub workspaces) and redeliver those
    /// this server has no record of. Needs SWITCHYARD_GITHUB__TOKEN. Prints a JSON report.
    ///
    /// Example: `switchyard github catch-up --hours 24`
    CatchUp {
        /// How far back to look (GitHub keeps deliveries for 3 days).
        #[arg(long, default_value_t = 72)]
        hours: i64,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionCommand {
    /// Position and lag of every projection.
    ///
    /// Example: `switchyard projections status --output json`
    Status,
    /// Rebuild one projection from position 0 beside the live one, then swap it in (the live
    /// read model stays online meanwhile). Shows a progress bar on a terminal.
    ///
    /// Example: `switchyard projections rebuild proposals`
    Rebuild {
        /// The projection's name (see `status`).
        name: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = cli.output;
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => output::fail(output, &error),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let output = cli.output;
    let settings =
        Settings::load(cli.config.as_ref()).map_err(|e| output::usage(format!("{e:#}")))?;
    let (modes, traces) = init_logging(&settings)?;
    match cli.command {
        Command::CheckConfig => check_config(&settings, output),
        Command::Catalog { command } => catalog::run(&settings, command, output),
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&switchyard_http_api::openapi())?
            );
            Ok(())
        }
        Command::Migrate => {
            let pool = connect(&settings).await?;
            let applied = migrate(&pool).await?;
            output.print(&serde_json::json!({"migrations_applied": applied}), || {
                format!("database schema is up to date ({applied} migrations applied)")
            })
        }
        Command::Serve { listen } => {
            let served = serve(settings, listen, modes).await;
            if let Some(traces) = traces {
                // Flush what is still buffered.
                let _ = traces.shutdown();
            }
            served
        }
        Command::Projections { command } => projections(settings, command, output).await,
        Command::Proposals { workspace, command } => {
            let allow_self_approval = settings.api.allow_self_approval;
            cli::proposals(
                open_store(&settings).await?,
                &workspace,
                command,
                allow_self_approval,
                output,
            )
            .await
        }
        Command::Retro {
            workspace,
            from,
            to,
            id,
        } => {
            let workspace = switchyard_events::Workspace::parse(&workspace)
                .map_err(|e| output::usage(format!("--workspace: {e}")))?;
            let event = switchyard_http_api::retrospective_trigger(
                workspace,
                "/cli",
                "cli",
                id,
                from.map(|f| (Some(f), to)),
            )
            .map_err(|e| {
                output::usage(
                    serde_json::to_value(&e)
                        .ok()
                        .and_then(|v| v["message"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| "the retrospective's period is invalid".to_owned()),
                )
            })?;
            let store = open_store(&settings).await?;
            let id = event.data["retrospective_id"].clone();
            let appended = store.append(vec![event]).await?;
            let sequence = appended.first().map(|a| a.position);
            output.print(
                &serde_json::json!({"retrospective_id": id, "sequence": sequence}),
                || {
                    format!(
                        "started retrospective {} (sequence {}); the retrospective agent answers it",
                        id.as_str().unwrap_or_default(),
                        sequence.unwrap_or_default()
                    )
                },
            )
        }
        Command::Events { command } => {
            cli::events(open_store(&settings).await?, command, output).await
        }
        Command::Tokens { command } => {
            cli::tokens(open_store(&settings).await?, command, output).await
        }
        Command::Github {
            command: GithubCommand::CatchUp { hours },
        } => {
            let token = settings.github.token.clone().ok_or_else(|| {
                output::usage("catching up needs a GitHub token: set SWITCHYARD_GITHUB__TOKEN")
            })?;
            let github = switchyard_github::GitHubHost::new(&settings.github.api_url, token)
                .map_err(|e| anyhow::anyhow!("GitHub client: {e}"))?;
            let store = open_store(&settings).await?;
            let report = switchyard_http_api::catch_up(store.pool(), &github, hours)
                .await
                .map_err(|e| output::unavailable(e.into()))?;
            output.print(&report, || {
                serde_json::to_string_pretty(&report).unwrap_or_default()
            })?;
            anyhow::ensure!(
                report.errors.is_empty(),
                "{} errors while catching up",
                report.errors.len()
            );
            Ok(())
        }
    }
}

/// Logs to stderr (stdout carries only what scripts read: the listening address), through a
/// filter that the observability mode swaps at run time.
fn init_logging(
    settings: &Settings,
) -> anyhow::Result<(
    Arc<switchyard_telemetry::Modes>,
    Option<opentelemetry_sdk::trace::SdkTracerProvider>,
)> {
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let shipping = std::env::var("RUST_LOG").unwrap_or_else(|_| settings.log.filter.clone());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(
        tracing_subscriber::EnvFilter::try_new(&shipping)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    );
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match settings.log.format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    // Spans go to the exporter whatever the log filter says: Switchyard's own, from info.
    let provider = switchyard_telemetry::provider(&settings.obs.traces)
        .map_err(|e| anyhow::anyhow!("traces: {e}"))?;
    let otel = provider.as_ref().map(|p| {
        switchyard_telemetry::layer(p).with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("switchyard", tracing::Level::INFO),
        )
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    let reload = move |directives: &str| {
        let filter =
            tracing_subscriber::EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    };
    let modes = Arc::new(switchyard_telemetry::Modes::new(
        Box::new(reload),
        &shipping,
        &settings.obs.debug_filter,
        settings.obs.mode,
    ));
    Ok((modes, provider))
}

/// This run of the server, in `server_runs`: holds a session advisory lock on its id while the
/// process lives (the connection dies with it). Returns the runs found dead without a clean
/// stop, this run's id, and the connection that holds its lock.
async fn register_run(
    pool: &PgPool,
) -> anyhow::Result<(Vec<uuid::Uuid>, uuid::Uuid, sqlx::PgConnection)> {
    let key = |id: uuid::Uuid| format!("switchyard.run.{id}");
    let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
    // Lock first, then show the row: a row that can be seen always has its lock held, unless
    // its process is gone.
    let me = uuid::Uuid::now_v7();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(key(me))
        .execute(&mut conn)
        .await?;
    let running: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM server_runs WHERE stopped_at IS NULL")
            .fetch_all(&mut conn)
            .await?;
    let mut crashed = Vec::new();
    for id in running {
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(key(id))
            .fetch_one(&mut conn)
            .await?;
        if free {
            sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(key(id))
                .execute(&mut conn)
                .await?;
            let marked = sqlx::query(
                "UPDATE server_runs SET stopped_at = now(), crashed = true WHERE id = $1 AND stopped_at IS NULL",
            )
            .bind(id)
            .execute(&mut conn)
            .await?;
            if marked.rows_affected() == 1 {
                crashed.push(id);
            }
        }
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    sqlx::query("INSERT INTO server_runs (id, host, pid) VALUES ($1, $2, $3)")
        .bind(me)
        .bind(host)
        .bind(i32::try_from(std::process::id()).unwrap_or_default())
        .execute(&mut conn)
        .await?;
    Ok((crashed, me, conn))
}

/// Connects to PostgreSQL, waiting up to `connect_timeout_secs` for it to come up.
async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let url = settings.database.url.expose_secret();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(settings.database.connect_timeout_secs);
    loop {
        let attempt = switchyard_store::pool_options()
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
                return Err(output::unavailable(anyhow::Error::new(e).context(
                    "cannot connect to PostgreSQL (set DATABASE_URL, or run scripts/up to start one)",
                )));
            }
        }
    }
}

/// Applies pending migrations; the number applied in all.
async fn migrate(pool: &PgPool) -> anyhow::Result<i64> {
    MIGRATOR.run(pool).await.context("applying migrations")?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    tracing::info!(applied, "database schema is up to date");
    Ok(applied)
}

/// Every projection the server runs.
fn all_projections() -> Vec<Arc<dyn switchyard_projections::Projection>> {
    let mut projections = ProjectionRunner::builtin();
    projections.push(Arc::new(switchyard_proposals::ProposalsProjection));
    projections.push(Arc::new(switchyard_workflows::WorkflowsProjection));
    projections.push(Arc::new(switchyard_artifacts::ArtifactsProjection));
    projections
}

/// The store, for commands that work on the database directly.
async fn open_store(settings: &Settings) -> anyhow::Result<EventStore> {
    let catalog =
        Catalog::load(settings.events_dir.as_deref()).context("loading the event catalog")?;
    let pool = connect(settings).await?;
    migrate(&pool).await?;
    Ok(EventStore::new(pool, Arc::new(catalog), &settings.store))
}

async fn projections(
    settings: Settings,
    command: ProjectionCommand,
    output: Output,
) -> anyhow::Result<()> {
    let catalog =
        Catalog::load(settings.events_dir.as_deref()).context("loading the event catalog")?;
    let pool = connect(&settings).await?;
    migrate(&pool).await?;
    let store = EventStore::new(pool, Arc::new(catalog), &settings.store);
    let runner =
        ProjectionRunner::new(store.clone(), all_projections(), settings.projections.batch)
            .with_rebuild_batch(settings.projections.rebuild_batch);
    runner.ensure_schemas().await?;
    match command {
        ProjectionCommand::Status => {
            let status = runner.status(1_000_000).await?;
            output.print(&status, || {
                status
                    .iter()
                    .map(|p| {
                        format!(
                            "{:<20} cursor {:<28} applied {:>10}  lag {:>8}",
                            p.name, p.cursor, p.applied, p.lag_events
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        ProjectionCommand::Rebuild { name } => {
            if !runner.names().contains(&name.as_str()) {
                return Err(output::not_found(format!(
                    "no projection named {name:?} (there are: {})",
                    runner.names().join(", ")
                )));
            }
            let total = store
                .lag(switchyard_events::Cursor::START, i64::MAX)
                .await?;
            let bar = indicatif::ProgressBar::new(u64::try_from(total).unwrap_or_default());
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "rebuilding {prefix} [{bar:30}] {pos}/{len} events, {per_sec}, {eta} left",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(name.clone());
            let started = std::time::Instant::now();
            let progress = {
                let bar = bar.clone();
                move |read: i64| bar.set_position(u64::try_from(read).unwrap_or_default())
            };
            let read = runner.rebuild_with_progress(&name, &progress).await?;
            bar.finish_and_clear();
            let seconds = started.elapsed().as_secs_f64();
            let per_second = read as f64 / seconds.max(1e-9);
            output.print(
                &serde_json::json!({
                    "projection": name, "read": read, "seconds": seconds,
                    "events_per_second": per_second, "swapped_in": true,
                }),
                || {
                    format!(
                        "rebuilt {name}: {read} events in {seconds:.2} s ({per_second:.0} events/s), swapped in"
                    )
                },
            )
        }
    }
}

async fn serve(
    settings: Settings,
    listen: Option<std::net::SocketAddr>,
    modes: Arc<switchyard_telemetry::Modes>,
) -> anyhow::Result<()> {
    let catalog =
        Catalog::load(settings.events_dir.as_deref()).context("loading the event catalog")?;
    tracing::info!(types = catalog.len(), "event catalog loaded");

    // The agents, and the artifact contracts held against them, before anything is touched:
    // broken contracts stop the server here.
    let github: Option<Arc<switchyard_github::GitHubHost>> = match &settings.github.token {
        Some(token) => Some(Arc::new(
            switchyard_github::GitHubHost::new(&settings.github.api_url, token.clone())
                .map_err(|e| anyhow::anyhow!("GitHub client: {e}"))?,
        )),
        None => None,
    };
    let dead_letters = switchyard_agents::DeadLetterHandle::default();
    let (agents, artifacts, schedule) =
        agents_and_contracts(&settings, github.clone(), dead_letters.clone())?;
    let manifests: Vec<switchyard_artifacts::AgentArtifacts> = agents
        .iter()
        .map(|a| switchyard_artifacts::AgentArtifacts::from(a.manifest()))
        .collect();
    let agent_bus = AgentBus {
        builtin: agents.iter().map(|a| a.manifest().name.clone()).collect(),
        stream: settings.relay.stream.clone(),
        subject_prefix: settings.relay.subject_prefix.clone(),
        runtime: settings.runtime.clone(),
    };

    let pool = connect(&settings).await?;
    migrate(&pool).await?;
    let (crashed, run, run_lock) = register_run(&pool).await.context("recording this run")?;
    if let Some(dead) = crashed.first() {
        let window = Duration::from_secs(settings.obs.crash_debug_secs);
        tracing::warn!(runs = crashed.len(), run = %dead, ?window, "an earlier run died without stopping: debug mode for a while");
        if let Err(e) = modes.set(
            switchyard_telemetry::Mode::Debug,
            Some(window),
            &format!("unclean shutdown of run {dead} detected at start"),
        ) {
            tracing::warn!(error = %e, "cannot switch to debug mode");
        }
    }
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
        // A comma-separated list names several nodes of a cluster.
        .connect(nats_servers(&settings.nats.url))
        .await
        .with_context(|| format!("invalid NATS_URL {}", settings.nats.url))?;

    let store = EventStore::new(pool, Arc::new(catalog), &settings.store);
    let shutdown = CancellationToken::new();

    // The machinery behind the API: relay, projections, agents. Every instance runs all of
    // them; the relay is active on one, projections and consumers share the work.
    let relay = Relay::new(store.clone(), nats.clone(), settings.relay.clone());
    let projections =
        ProjectionRunner::new(store.clone(), all_projections(), settings.projections.batch)
            .with_coalesce(Duration::from_millis(settings.projections.coalesce_ms))
            .with_rebuild_batch(settings.projections.rebuild_batch);
    projections
        .ensure_schemas()
        .await
        .context("creating projection tables")?;
    let runtime = AgentRuntime::new(
        store.clone(),
        nats.clone(),
        &settings.relay.stream,
        &settings.relay.subject_prefix,
        settings.runtime.clone(),
        agents,
    );
    runtime.register().await.context("registering agents")?;
    dead_letters.set(Arc::new(ops::RuntimeDeadLetters(runtime.clone())));
    let mut tasks = vec![
        tokio::spawn(relay.clone().run(shutdown.clone())),
        tokio::spawn(projections.clone().run(shutdown.clone())),
        tokio::spawn(runtime.clone().run(shutdown.clone())),
        tokio::spawn(switchyard_agents::watch_deadlines(
            store.clone(),
            Duration::from_millis(settings.workflows.deadline_scan_ms.max(50)),
            shutdown.clone(),
        )),
    ];
    if let Some(cron) = schedule {
        tasks.push(tokio::spawn(switchyard_agents::schedule_retrospectives(
            store.clone(),
            cron,
            shutdown.clone(),
        )));
    }
    let ops = Arc::new(ops::ServerOps::new(
        store.clone(),
        relay,
        projections,
        runtime,
    ));
    let mut state = AppState::new(store.clone(), Some(nats), settings.api.clone())
        .with_ops(ops)
        .with_modes(Arc::clone(&modes))
        .with_artifacts(Arc::clone(&artifacts.contracts), manifests)
        .with_agent_bus(agent_bus);
    match &settings.github.webhook_secret {
        Some(secret) => state = state.with_webhook_secret(WebhookSecret::new(secret.clone())),
        None => tracing::info!(
            "SWITCHYARD_GITHUB_WEBHOOK_SECRET is not set: POST /v1/github/webhook is off"
        ),
    }
    if let Some(github) = &github {
        state = state.with_github(Arc::clone(github));
    }
    let app = router(state);

    let address = listen.unwrap_or(settings.listen);
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let bound = listener.local_addr()?;
    // Scripts and tests read this line to find the port.
    println!("switchyard listening on http://{bound}");
    tracing::info!(%bound, "serving");
    // Deliveries GitHub could not make while this server was down: ask for them again, once
    // the route is up to receive them.
    if let Some(github) = github.clone()
        && settings.github.catch_up_hours > 0
    {
        let pool = store.pool().clone();
        let hours = settings.github.catch_up_hours;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = switchyard_http_api::catch_up(&pool, &github, hours).await {
                tracing::warn!(error = %e, "GitHub delivery catch-up failed");
            }
        });
    }
    let signal = shutdown.clone();
    switchyard_http_api::serve(listener, app, &settings.server, async move {
        shutdown_signal().await;
        signal.cancel();
    })
    .await
    .context("HTTP server failed")?;
    shutdown.cancel();
    // Give the relay, projections and consumers a moment to finish what they hold; anything
    // unfinished is redone from its checkpoint at the next start.
    let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(tasks)).await;
    // A clean stop: the next start finds nothing to worry about.
    if let Err(e) = sqlx::query("UPDATE server_runs SET stopped_at = now() WHERE id = $1")
        .bind(run)
        .execute(store.pool())
        .await
    {
        tracing::warn!(error = %e, "cannot record the clean stop of this run");
    }
    drop(run_lock);
    tracing::info!("stopped");
    Ok(())
}

/// `switchyard check-config`: what `serve` checks before it touches anything.
fn check_config(settings: &Settings, output: Output) -> anyhow::Result<()> {
    let catalog = Catalog::load(settings.events_dir.as_deref())
        .context("loading the event catalog")
        .map_err(|e| output::usage(format!("{e:#}")))?;
    let (agents, artifacts, schedule) = agents_and_contracts(
        settings,
        None,
        switchyard_agents::DeadLetterHandle::default(),
    )
    .map_err(|e| output::usage(format!("{e:#}")))?;
    let retrospectives = if schedule.is_some() {
        format!("at {:?} (UTC)", settings.retrospectives.schedule)
    } else {
        "by hand only".to_owned()
    };
    let nats = nats_servers(&settings.nats.url).len();
    output.print(
        &serde_json::json!({
            "ok": true,
            "listen": settings.listen.to_string(),
            "nats_servers": nats,
            "event_types": catalog.len(),
            "agents": agents.iter().map(|a| a.manifest().name.clone()).collect::<Vec<_>>(),
            "artifact_contracts": artifacts.contracts.all().len(),
            "retrospectives": retrospectives,
        }),
        || {
            format!(
                "configuration ok: listen {}, {nats} NATS server(s), {} event types, {} agents, {} artifact contracts, retrospectives {retrospectives}",
                settings.listen,
                catalog.len(),
                agents.len(),
                artifacts.contracts.all().len(),
            )
        },
    )
}

/// The agents, their artifact contracts, and the retrospective schedule.
type Checked = (
    Vec<Arc<dyn switchyard_agent_runtime::Agent>>,
    switchyard_agents::ArtifactAgents,
    Option<croner::Cron>,
);

/// The built-in agents, and the artifact contracts held against them, and the retrospective
/// schedule: everything `serve` checks before it touches anything.
fn agents_and_contracts(
    settings: &Settings,
    github: Option<Arc<switchyard_github::GitHubHost>>,
    dead_letters: switchyard_agents::DeadLetterHandle,
) -> anyhow::Result<Checked> {
    let artifacts = artifact_agents(settings)?;
    let agents = switchyard_agents::builtin(github, dead_letters, &settings.workflows, &artifacts);
    // The contracts must hold against the agents that run, or nothing starts.
    let manifests: Vec<switchyard_artifacts::AgentArtifacts> = agents
        .iter()
        .map(|a| switchyard_artifacts::AgentArtifacts::from(a.manifest()))
        .collect();
    artifacts
        .contracts
        .check(&manifests, &contracts_origin(settings))
        .map_err(contract_error)?;
    let schedule = match settings.retrospectives.schedule.trim() {
        "" => None,
        pattern => Some(switchyard_agents::parse_schedule(pattern).map_err(anyhow::Error::msg)?),
    };
    Ok((agents, artifacts, schedule))
}

/// `NATS_URL` split at commas: every node of a cluster, for the first connection and failover.
fn nats_servers(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

fn contracts_origin(settings: &Settings) -> String {
    settings.artifacts.file.as_ref().map_or_else(
        || "config/artifacts.yaml (built in)".to_owned(),
        |f| f.display().to_string(),
    )
}

/// Contract problems, one per line.
fn contract_error(e: switchyard_artifacts::ContractErrors) -> anyhow::Error {
    anyhow::anyhow!(
        "the artifact contracts in {} do not hold:\n  - {}",
        e.origin,
        e.problems.join("\n  - ")
    )
}

/// The contracts (the operator's file, else the built-in one) and the artifact agents'
/// settings.
fn artifact_agents(settings: &Settings) -> anyhow::Result<switchyard_agents::ArtifactAgents> {
    let origin = contracts_origin(settings);
    let contracts = match &settings.artifacts.file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read artifact contracts {}", file.display()))?;
            switchyard_artifacts::Contracts::from_yaml(&text, &origin)
        }
        None => switchyard_artifacts::Contracts::builtin(),
    }
    .map_err(contract_error)?;
    let stale_after =
        humantime::parse_duration(&settings.coach.stale_after).with_context(|| {
            format!(
                "coach.stale_after {:?} is not a duration",
                settings.coach.stale_after
            )
        })?;
    Ok(switchyard_agents::ArtifactAgents {
        contracts: Arc::new(contracts),
        retrospectives: settings.retrospectives.clone(),
        stale_after,
    })
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

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory as _;

    /// Every leaf subcommand's `--help` shows an example.
    #[test]
    fn every_subcommand_has_an_example() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            let subcommands: Vec<_> = command.get_subcommands().collect();
            let help = command
                .get_long_about()
                .or(command.get_about())
                .map(ToString::to_string)
                .unwrap_or_default();
            if subcommands.is_empty() && !help.contains("Example") {
                missing.push(path.clone());
            }
            for sub in subcommands {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        for sub in super::Cli::command().get_subcommands() {
            walk(sub, "switchyard", &mut missing);
        }
        assert!(missing.is_empty(), "no example in the help of: {missing:?}");
    }
}
