//! Configuration: the compiled-in `config/default.toml`, then an optional file, then the
//! environment (`DATABASE_URL`, `NATS_URL`, `SWITCHYARD_*` with `__` for nesting).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use secrecy::SecretString;
use serde::Deserialize;
use switchyard_agent_runtime::RuntimeConfig;
use switchyard_http_api::ApiConfig;
use switchyard_relay::RelayConfig;
use switchyard_store::StoreConfig;

const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// Top-level keys that `SWITCHYARD_*` variables may set. Other `SWITCHYARD_*` variables (used
/// by the scripts) are not configuration.
const KEYS: &[&str] = &[
    "listen",
    "events_dir",
    "admin_token",
    "database",
    "nats",
    "log",
    "store",
    "api",
    "relay",
    "runtime",
    "projections",
    "github",
    "server",
    "workflows",
    "obs",
    "artifacts",
    "retrospectives",
    "coach",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) events_dir: Option<PathBuf>,
    pub(crate) admin_token: Option<SecretString>,
    pub(crate) database: DatabaseSettings,
    pub(crate) nats: NatsSettings,
    pub(crate) log: LogSettings,
    pub(crate) store: StoreConfig,
    pub(crate) api: ApiConfig,
    pub(crate) relay: RelayConfig,
    pub(crate) runtime: RuntimeConfig,
    pub(crate) projections: ProjectionSettings,
    pub(crate) github: GitHubSettings,
    pub(crate) server: switchyard_http_api::ServeLimits,
    pub(crate) workflows: switchyard_agents::WorkflowsConfig,
    pub(crate) obs: ObsSettings,
    pub(crate) artifacts: ArtifactSettings,
    pub(crate) retrospectives: switchyard_agents::RetrospectiveConfig,
    pub(crate) coach: CoachSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArtifactSettings {
    /// A contracts file in place of the compiled-in `config/artifacts.yaml`.
    pub(crate) file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CoachSettings {
    /// A proposal waiting longer than this for a decision gets a nudge (e.g. `24h`).
    pub(crate) stale_after: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ObsSettings {
    /// `shipping` or `debug` (`SWITCHYARD_OBS_MODE`).
    pub(crate) mode: switchyard_telemetry::Mode,
    /// The log filter of debug mode.
    pub(crate) debug_filter: String,
    /// After an unclean shutdown is detected at start, debug mode for this long.
    pub(crate) crash_debug_secs: u64,
    /// Where spans go.
    pub(crate) traces: switchyard_telemetry::TraceConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GitHubSettings {
    /// The REST API (GitHub Enterprise has its own).
    pub(crate) api_url: String,
    /// A token that may push branches and open pull requests; from the environment only
    /// (`SWITCHYARD_GITHUB__TOKEN`). Without it, GitHub workspaces cannot be committed to.
    pub(crate) token: Option<SecretString>,
    /// The secret GitHub signs webhook deliveries with; from the environment only
    /// (`SWITCHYARD_GITHUB_WEBHOOK_SECRET`). Without it, `POST /v1/github/webhook` is off.
    pub(crate) webhook_secret: Option<SecretString>,
    /// At start, redeliver the failed deliveries of the last this many hours (0: never).
    pub(crate) catch_up_hours: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProjectionSettings {
    pub(crate) batch: u32,
    pub(crate) rebuild_batch: u32,
    pub(crate) coalesce_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatabaseSettings {
    pub(crate) url: SecretString,
    pub(crate) max_connections: u32,
    pub(crate) connect_timeout_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NatsSettings {
    pub(crate) url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogSettings {
    pub(crate) format: LogFormat,
    pub(crate) filter: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Loads the layers; `file` is `--config` / `SWITCHYARD_CONFIG`.
    pub(crate) fn load(file: Option<&PathBuf>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(file) = file {
            anyhow::ensure!(
                file.exists(),
                "configuration file {} does not exist",
                file.display()
            );
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(
                Env::raw()
                    .only(&["SWITCHYARD_GITHUB_WEBHOOK_SECRET"])
                    .map(|_| "github.webhook_secret".into()),
            )
            .merge(
                Env::raw()
                    .only(&["SWITCHYARD_OBS_MODE"])
                    .map(|_| "obs.mode".into()),
            )
            .merge(Env::prefixed("SWITCHYARD_").split("__").filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                key != "github_webhook_secret"
                    && key != "obs_mode"
                    && KEYS.iter().any(|k| {
                        key.strip_prefix(k)
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '_']))
                    })
            }))
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database.url".into()),
            )
            .merge(Env::raw().only(&["NATS_URL"]).map(|_| "nats.url".into()))
            .extract()
            .context("invalid configuration")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn defaults_parse_and_environment_overrides() {
        figment::Jail::expect_with(|jail| {
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.listen.port(), 8080);
            assert_eq!(settings.store.writers, 1);

            jail.set_env("SWITCHYARD_LISTEN", "127.0.0.1:9999");
            jail.set_env("SWITCHYARD_STORE__WRITERS", "4");
            jail.set_env("SWITCHYARD_FORCE_LOCAL_SERVICES", "1");
            jail.set_env("NATS_URL", "nats://127.0.0.1:14222");
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.listen.port(), 9999);
            assert_eq!(settings.store.writers, 4);
            assert_eq!(settings.nats.url, "nats://127.0.0.1:14222");

            jail.set_env("SWITCHYARD_GITHUB_WEBHOOK_SECRET", "s3cret");
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert!(settings.github.webhook_secret.is_some());

            jail.set_env("SWITCHYARD_STORE__WRTIERS", "4");
            let err = Settings::load(None)
                .map(|_| ())
                .map_err(|e| format!("{e:#}"));
            assert!(
                err.is_err_and(|e| e.contains("wrtiers")),
                "a typo is an error"
            );
            Ok(())
        });
    }
}
