//! Runner agents: one per configured role (`runner-<role>`), each running the command the
//! configuration gives its role — a team's coding-agent CLI, or any script — for the tasks
//! the orchestrator dispatches to it.
//!
//! A run happens in the task's working directory: a git worktree of the workspace's local
//! repository (a plain directory when it has none), one per plan task, shared by its branch
//! tasks and reviews; a dependant's worktree starts with its dependencies' commits merged.
//! The command never goes through a shell: program and arguments come from configuration, and
//! what the task says reaches it only as a file (`SWITCHYARD_TASK_FILE`, JSON). It runs with a
//! scrubbed environment, in its own process group (killed whole on timeout), under
//! `prlimit` resource limits where the machine has `prlimit`, and with bounded captured
//! output. Then the task's acceptance checks run the same way; a check that fails is run once
//! more, and one that then passes marks the failure flaky. The agent may write a report
//! (`SWITCHYARD_REPORT_FILE`, JSON: `summary`, `cause`, `verdict`, `message`).
//!
//! The work happens outside any transaction ([`Agent::work`]); its outcome
//! (`task.completed/failed/reviewed.v1`) commits with the "handled" record, so a redelivery
//! after a crash runs the task again (a retry) and never reports twice.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_agent_runtime::{Agent, Context, HandlerError, Manifest, WorkContext};
use switchyard_events::{EventType, RecordedEvent};
use switchyard_workflows::{PlanStatus, load, stream, types};
use tokio::{io::AsyncReadExt as _, process::Command};
use tracing::Instrument as _;

/// What a role runs.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RoleConfig {
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    /// Capability tags for the registry and the router (`role:<role>` is added).
    pub capabilities: Vec<String>,
    /// Extra environment variables for the command.
    pub env: BTreeMap<String, String>,
    /// Names of the server's environment variables passed on to the command.
    pub pass_env: Vec<String>,
}

/// Resource limits of a command (through `prlimit`; 0 = no limit).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Address space, MiB.
    pub memory_mb: u64,
    /// CPU time, seconds.
    pub cpu_secs: u64,
    /// Largest file it may write, MiB.
    pub file_size_mb: u64,
    /// Open files.
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 4_096,
            cpu_secs: 3_600,
            file_size_mb: 1_024,
            open_files: 1_024,
        }
    }
}

/// Workflow settings: the roles, where runs happen, and the orchestrator's timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowsConfig {
    /// Where worktrees and run directories go; empty: `<temp dir>/switchyard-work`.
    pub work_dir: PathBuf,
    /// `PATH` of the commands.
    pub path: String,
    /// Bytes of output kept (the tail) per command.
    pub output_tail_bytes: usize,
    /// Resource limits per command.
    pub limits: Limits,
    /// The first retry of a failed task waits this long (ms), doubling per failure.
    pub retry_backoff_ms: u64,
    /// Added to a run's time limits before the deadline watcher times it out (s).
    pub silence_grace_secs: u64,
    /// How often the deadline watcher looks (ms).
    pub deadline_scan_ms: u64,
    /// The roles: one runner agent each.
    pub roles: BTreeMap<String, RoleConfig>,
}

impl Default for WorkflowsConfig {
    fn default() -> Self {
        Self {
            work_dir: PathBuf::new(),
            path: "/usr/local/bin:/usr/bin:/bin".into(),
            output_tail_bytes: 8_192,
            limits: Limits::default(),
            retry_backoff_ms: 2_000,
            silence_grace_secs: 30,
            deadline_scan_ms: 1_000,
            roles: BTreeMap::new(),
        }
    }
}

impl WorkflowsConfig {
    /// The directory runs happen under.
    pub fn work_dir(&self) -> PathBuf {
        if self.work_dir.as_os_str().is_empty() {
            std::env::temp_dir().join("switchyard-work")
        } else {
            self.work_dir.clone()
        }
    }
}

/// What the runners of one server share.
#[derive(Debug)]
struct Shared {
    work_dir: PathBuf,
    path: String,
    tail: usize,
    limits: Limits,
    prlimit: Option<PathBuf>,
}

/// A runner agent for one role.
#[derive(Debug)]
pub struct RunnerAgent {
    manifest: Manifest,
    role: String,
    config: RoleConfig,
    shared: Arc<Shared>,
}

/// One runner agent per configured role.
pub fn runners(config: &WorkflowsConfig) -> Vec<RunnerAgent> {
    let prlimit = ["/usr/bin/prlimit", "/bin/prlimit"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if prlimit.is_none() {
        tracing::warn!("prlimit is not installed: runner commands run without resource limits");
    }
    let shared = Arc::new(Shared {
        work_dir: config.work_dir(),
        path: config.path.clone(),
        tail: config.output_tail_bytes.max(256),
        limits: config.limits.clone(),
        prlimit,
    });
    config
        .roles
        .iter()
        .map(|(role, role_config)| RunnerAgent::new(role, role_config.clone(), Arc::clone(&shared)))
        .collect()
}

impl RunnerAgent {
    fn new(role: &str, config: RoleConfig, shared: Arc<Shared>) -> Self {
        let types = |names: &[&str]| -> Vec<EventType> {
            names
                .iter()
                .filter_map(|t| EventType::parse(t).ok())
                .collect()
        };
        let mut capabilities = vec![format!("role:{role}")];
        capabilities.extend(config.capabilities.iter().cloned());
        Self {
            manifest: Manifest {
                produces: Vec::new(),
                consumes: Vec::new(),
                name: format!("runner-{role}"),
                version: "0.1.0".into(),
                capabilities,
                subscribes: types(&[types::TASK_DISPATCHED]),
                emits: types(&[
                    types::TASK_STARTED,
                    types::TASK_COMPLETED,
                    types::TASK_FAILED,
                    types::TASK_REVIEWED,
                ]),
            },
            role: role.to_owned(),
            config,
            shared,
        }
    }
}

/// What a program did.
#[derive(Debug)]
struct Ran {
    exit_code: Option<i32>,
    timed_out: bool,
    output_tail: String,
    duration_ms: u64,
    spawn_error: Option<String>,
}

impl Ran {
    fn passed(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && self.spawn_error.is_none()
    }

    fn reason(&self, what: &str) -> String {
        if let Some(e) = &self.spawn_error {
            format!("{what} could not start: {e}")
        } else if self.timed_out {
            format!("{what} ran out of time")
        } else {
            match self.exit_code {
                Some(code) => format!("{what} exited with {code}"),
                None => format!("{what} was killed by a signal"),
            }
        }
    }
}

/// Keeps the last `cap` bytes.
fn keep_tail(buffer: &mut Vec<u8>, chunk: &[u8], cap: usize) {
    buffer.extend_from_slice(chunk);
    if buffer.len() > cap {
        let cut = buffer.len() - cap;
        buffer.drain(..cut);
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A process group left running by an earlier run of this working directory (the server was
/// killed): kill it before anything else runs there.
fn reap_leftover(pid_file: &Path) {
    if let Ok(text) = std::fs::read_to_string(pid_file)
        && let Ok(pid) = text.trim().parse::<u32>()
    {
        kill_group(Some(pid));
    }
    let _ = std::fs::remove_file(pid_file);
}

impl Shared {
    /// Runs `argv` in `cwd`, without a shell, in a process group of its own, with `env` only.
    async fn run(
        &self,
        argv: &[String],
        cwd: &Path,
        env: &[(String, String)],
        timeout: Duration,
        pid_file: &Path,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Ran {
        let started = Instant::now();
        let (program, args) = match argv.split_first() {
            Some(split) => split,
            None => {
                return Ran {
                    exit_code: None,
                    timed_out: false,
                    output_tail: String::new(),
                    duration_ms: 0,
                    spawn_error: Some("no command is configured".into()),
                };
            }
        };
        let mut command = match &self.prlimit {
            Some(prlimit) => {
                let mut c = Command::new(prlimit);
                let l = &self.limits;
                for (flag, value) in [
                    ("--as", l.memory_mb.saturating_mul(1 << 20)),
                    ("--cpu", l.cpu_secs),
                    ("--fsize", l.file_size_mb.saturating_mul(1 << 20)),
                    ("--nofile", l.open_files),
                ] {
                    if value > 0 {
                        c.arg(format!("{flag}={value}"));
                    }
                }
                c.arg("--").arg(program).args(args);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        };
        command
            .current_dir(cwd)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return Ran {
                    exit_code: Some(127),
                    timed_out: false,
                    output_tail: String::new(),
                    duration_ms: 0,
                    spawn_error: Some(format!("{program}: {e}")),
                };
            }
        };
        let pid = child.id();
        if let Some(pid) = pid {
            let _ = std::fs::write(pid_file, pid.to_string());
        }
        let tail = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
        for mut stream in [stdout, stderr].into_iter().flatten() {
            let tail = Arc::clone(&tail);
            let cap = self.tail;
            readers.push(tokio::spawn(async move {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut tail) = tail.lock() {
                        keep_tail(&mut tail, &chunk[..n], cap);
                    }
                }
            }));
        }
        let (exit_code, timed_out) = tokio::select! {
            status = child.wait() => (status.ok().and_then(|s| s.code()), false),
            () = tokio::time::sleep(timeout) => (None, true),
            () = shutdown.cancelled() => (None, false),
        };
        // Whatever it left behind goes with it; then the pipes close.
        kill_group(pid);
        let _ = child.wait().await;
        let _ = std::fs::remove_file(pid_file);
        for reader in readers {
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
        let output_tail = tail
            .lock()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default();
        Ran {
            exit_code,
            timed_out,
            output_tail,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            spawn_error: None,
        }
    }
}

async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Switchyard runner",
            "-c",
            "user.email=runner@switchyard.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("git: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Takes the repository's worktree lock (an exclusive `flock` on a file in its `.git`, held
/// until the returned file is dropped), waiting in a blocking thread while another holds it.
async fn lock_worktrees(repo: &Path) -> Result<std::fs::File, String> {
    let git_dir = repo.join(".git");
    let path = if git_dir.is_dir() {
        git_dir.join("switchyard-worktrees.lock")
    } else {
        // The repository is itself a worktree (`.git` is a file): a lock beside it.
        repo.with_extension("switchyard-worktrees.lock")
    };
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.lock()
            .map_err(|e| format!("locking {}: {e}", path.display()))?;
        Ok(file)
    })
    .await
    .map_err(|e| format!("waiting for the worktree lock: {e}"))?
}

/// Prepares the plan task's working directory; true when it is a git worktree.
async fn prepare_tree(
    tree: &Path,
    repository: Option<&Path>,
    base_commits: &[String],
) -> Result<bool, String> {
    if tree.join(".git").exists() {
        return Ok(true);
    }
    if tree.exists() {
        return Ok(false);
    }
    if let Some(parent) = tree.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    match repository {
        Some(repo) if repo.join(".git").exists() => {
            let target = tree.to_string_lossy().into_owned();
            // One `worktree add` at a time per repository, across instances: git reads every
            // other worktree's records while it adds one, and failed on another add's
            // half-written ones ("failed to read .git/worktrees/t4/commondir", CI under load).
            let lock = lock_worktrees(repo).await?;
            // `--force`: a worktree left registered by a run that died before its directory
            // existed is taken over. (Not `git worktree prune`: run beside another run's `add`,
            // it removes that worktree's half-made records.)
            let added = git(
                repo,
                &["worktree", "add", "--force", "--detach", &target, "HEAD"],
            )
            .await;
            drop(lock);
            added?;
            for commit in base_commits {
                git(tree, &["merge", "--no-edit", "--quiet", commit])
                    .await
                    .map_err(|e| format!("merging dependency commit {commit}: {e}"))?;
            }
            Ok(true)
        }
        _ => {
            std::fs::create_dir_all(tree).map_err(|e| format!("{}: {e}", tree.display()))?;
            Ok(false)
        }
    }
}

fn field<'a>(data: &'a Value, key: &str) -> &'a str {
    data.get(key).and_then(Value::as_str).unwrap_or_default()
}

impl RunnerAgent {
    fn env(&self, run_dir: &Path, tree: &Path, data: &Value) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), self.shared.path.clone()),
            ("HOME".into(), run_dir.to_string_lossy().into_owned()),
            (
                "TMPDIR".into(),
                run_dir.join("tmp").to_string_lossy().into_owned(),
            ),
            ("LANG".into(), "C.UTF-8".into()),
            (
                "SWITCHYARD_TASK_FILE".into(),
                run_dir.join("task.json").to_string_lossy().into_owned(),
            ),
            (
                "SWITCHYARD_REPORT_FILE".into(),
                run_dir.join("report.json").to_string_lossy().into_owned(),
            ),
            (
                "SWITCHYARD_WORKDIR".into(),
                tree.to_string_lossy().into_owned(),
            ),
            ("SWITCHYARD_ROLE".into(), self.role.clone()),
        ];
        for key in ["plan_id", "task_id", "kind"] {
            env.push((
                format!("SWITCHYARD_{}", key.to_uppercase()),
                field(data, key).to_owned(),
            ));
        }
        env.push((
            "SWITCHYARD_ATTEMPT".into(),
            data["attempt"].as_u64().unwrap_or(1).to_string(),
        ));
        for name in &self.config.pass_env {
            if let Ok(value) = std::env::var(name) {
                env.push((name.clone(), value));
            }
        }
        for (k, v) in &self.config.env {
            env.push((k.clone(), v.clone()));
        }
        env
    }

    fn run_dir(&self, event: &RecordedEvent) -> PathBuf {
        let data = &event.data;
        self.shared
            .work_dir
            .join(event.workspace.as_str())
            .join(field(data, "plan_id"))
            .join("runs")
            .join(format!(
                "{}-{}",
                field(data, "task_id"),
                data["attempt"].as_u64().unwrap_or(1)
            ))
    }

    /// Does one run, with the messages it claimed from the agent's inbox in its task file; the
    /// outcome says which messages the agent's report asks to send.
    async fn work_on(
        &self,
        work: &WorkContext,
        event: &RecordedEvent,
    ) -> Result<Value, HandlerError> {
        if field(&event.data, "agent") != self.manifest.name {
            return Ok(json!({"skip": "dispatched to another agent"}));
        }
        let span = tracing::info_span!(
            "task.run",
            plan.id = field(&event.data, "plan_id"),
            task.id = field(&event.data, "task_id"),
            task.attempt = event.data["attempt"].as_u64().unwrap_or(1),
            task.kind = field(&event.data, "kind"),
            agent.name = %self.manifest.name,
        );
        let mut outcome = self.run_task(work, event).instrument(span).await?;
        if outcome.get("type").is_some() {
            let report = read_report(&self.run_dir(event).join("report.json"));
            if let Some(send) = report["messages"].as_array() {
                outcome["send"] = json!(send.iter().take(20).collect::<Vec<_>>());
            }
        }
        Ok(outcome)
    }

    /// Does one dispatched run; returns the outcome's type and data (or a skip).
    async fn run_task(
        &self,
        work: &WorkContext,
        event: &RecordedEvent,
    ) -> Result<Value, HandlerError> {
        let data = &event.data;
        let (plan_id, task_id) = (field(data, "plan_id"), field(data, "task_id"));
        let attempt = data["attempt"].as_u64().unwrap_or(1);
        let workspace = event.workspace.as_str();
        // A dispatch that is no longer current (redelivered after the plan moved on, or the
        // plan was cancelled) is not run.
        {
            let mut conn = work.pool().acquire().await?;
            let state = load(&mut conn, workspace, plan_id).await?;
            let current = state.as_ref().and_then(|s| {
                let task = s.task(task_id)?;
                (s.status == PlanStatus::Running).then_some(task.current.as_ref()?.attempt)
            });
            if current.map(u64::from) != Some(attempt) {
                return Ok(json!({"skip": "the dispatch is no longer current"}));
            }
        }
        let not_before = data
            .get("not_before")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
        if let Some(at) = not_before
            && let Ok(wait) = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std()
        {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = work.shutdown().cancelled() => return Err(HandlerError::new("shutting down")),
            }
        }
        // The messages for this step (claimed once, whichever run of this agent comes first).
        let messages = work
            .claim_inbox(&format!(
                "plan {plan_id}, task {task_id}, attempt {attempt}"
            ))
            .await?;
        let kind = field(data, "kind").to_owned();
        let plan_dir = self.shared.work_dir.join(workspace).join(plan_id);
        let tree = plan_dir.join("tree").join(field(data, "root_task_id"));
        let run_dir = self.run_dir(event);
        let outcome_base = json!({
            "plan_id": plan_id, "task_id": task_id, "attempt": attempt, "kind": kind,
            "agent": self.manifest.name,
        });
        work.emit_now(types::TASK_STARTED, &stream(plan_id), {
            let mut started = outcome_base.clone();
            started["started_at"] = json!(chrono::Utc::now().to_rfc3339());
            started["workdir"] = json!(tree.to_string_lossy());
            started
        })
        .await?;

        let failed = |phase: &str, reason: String, ran: Option<&Ran>, extra: Value| {
            let mut out = outcome_base.clone();
            out["phase"] = json!(phase);
            out["reason"] = json!(reason);
            out["exit_code"] = json!(ran.and_then(|r| r.exit_code));
            out["timed_out"] = json!(ran.is_some_and(|r| r.timed_out));
            out["output_tail"] = json!(ran.map(|r| r.output_tail.as_str()).unwrap_or_default());
            if let Value::Object(extra) = extra {
                for (k, v) in extra {
                    out[k] = v;
                }
            }
            json!({"type": types::TASK_FAILED, "data": out})
        };

        // The working directory.
        let repository: Option<Value> = sqlx::query_scalar(
            "SELECT data->'repository' FROM events WHERE workspace = $1 AND stream_id = 'workspace' AND stream_version = 1",
        )
        .bind(workspace)
        .fetch_optional(work.pool())
        .await?;
        let repo_path = repository
            .as_ref()
            .filter(|r| r["kind"] == "local")
            .and_then(|r| r["path"].as_str())
            .map(PathBuf::from);
        let base_commits: Vec<String> = data["base_commits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let pid_file = plan_dir
            .join("tree")
            .join(format!("{}.pid", field(data, "root_task_id")));
        reap_leftover(&pid_file);
        let is_git = match prepare_tree(&tree, repo_path.as_deref(), &base_commits).await {
            Ok(is_git) => is_git,
            Err(e) => return Ok(failed("setup", e, None, json!({}))),
        };
        if let Err(e) = std::fs::create_dir_all(run_dir.join("tmp")) {
            return Ok(failed(
                "setup",
                format!("{}: {e}", run_dir.display()),
                None,
                json!({}),
            ));
        }
        let mut task_file = data.clone();
        for key in ["recommendation", "decision", "base_commits", "not_before"] {
            if let Value::Object(map) = &mut task_file {
                map.remove(key);
            }
        }
        task_file["workdir"] = json!(tree.to_string_lossy());
        task_file["messages"] = json!(messages);
        let task_file_path = run_dir.join("task.json");
        let report_path = run_dir.join("report.json");
        let _ = std::fs::remove_file(&report_path);
        if let Err(e) = std::fs::write(&task_file_path, task_file.to_string()) {
            return Ok(failed(
                "setup",
                format!("writing the task file: {e}"),
                None,
                json!({}),
            ));
        }
        let env = self.env(&run_dir, &tree, data);
        let shutdown = work.shutdown().clone();

        // The role's command (not for a verification).
        let mut command_ran = None;
        if kind != "verify" {
            let timeout =
                Duration::from_secs(data["timeout_secs"].as_u64().unwrap_or(1_800).max(1));
            let ran = self
                .shared
                .run(
                    &self.config.command,
                    &tree,
                    &env,
                    timeout,
                    &pid_file,
                    &shutdown,
                )
                .await;
            if shutdown.is_cancelled() {
                return Err(HandlerError::new("shutting down"));
            }
            let report = read_report(&report_path);
            if kind == "review" {
                if ran.timed_out || ran.spawn_error.is_some() {
                    let reason = ran.reason("the reviewer's command");
                    return Ok(failed("command", reason, Some(&ran), json!({})));
                }
                let verdict = match report["verdict"].as_str() {
                    Some("approved") => "approved",
                    Some(_) => "changes_requested",
                    None if ran.passed() => "approved",
                    None => "changes_requested",
                };
                let message = report["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| ran.output_tail.clone());
                let mut out = outcome_base.clone();
                out["verdict"] = json!(verdict);
                out["message"] = json!(truncate(&message, 8_000));
                out["cycle"] = data["review_cycle"].clone();
                return Ok(json!({"type": types::TASK_REVIEWED, "data": out}));
            }
            if !ran.passed() {
                let reason = ran.reason(&format!("the {} command", self.role));
                let mut extra = json!({"duration_ms": ran.duration_ms});
                copy_report(&report, &mut extra);
                return Ok(failed("command", reason, Some(&ran), extra));
            }
            command_ran = Some(ran);
        }

        // The acceptance checks.
        let checks = data["acceptance"].as_array().cloned().unwrap_or_default();
        let mut results = Vec::with_capacity(checks.len());
        for (i, check) in checks.iter().enumerate() {
            let argv: Vec<String> = check["run"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let name = check["name"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    argv.first()
                        .cloned()
                        .unwrap_or_else(|| format!("check {i}"))
                });
            let timeout = Duration::from_secs(check["timeout_secs"].as_u64().unwrap_or(300).max(1));
            let ran = self
                .shared
                .run(&argv, &tree, &env, timeout, &pid_file, &shutdown)
                .await;
            if shutdown.is_cancelled() {
                return Err(HandlerError::new("shutting down"));
            }
            let mut result = json!({
                "name": name, "exit_code": ran.exit_code, "passed": ran.passed(),
                "timed_out": ran.timed_out, "duration_ms": ran.duration_ms,
            });
            if !ran.passed() {
                // Once more: a check that now passes on the same code is flaky.
                let again = if ran.timed_out {
                    None
                } else {
                    Some(
                        self.shared
                            .run(&argv, &tree, &env, timeout, &pid_file, &shutdown)
                            .await,
                    )
                };
                let flaky = again.as_ref().is_some_and(Ran::passed);
                result["output_tail"] = json!(ran.output_tail);
                results.push(result);
                let report = read_report(&report_path);
                let mut extra = json!({"acceptance": results, "flaky": flaky});
                copy_report(&report, &mut extra);
                let reason = format!("acceptance check {name}: {}", ran.reason("it"));
                return Ok(failed("acceptance", reason, Some(&ran), extra));
            }
            results.push(result);
        }

        // Passed: record what changed.
        let mut out = outcome_base.clone();
        out["acceptance"] = json!(results);
        if let Some(ran) = &command_ran {
            out["exit_code"] = json!(ran.exit_code);
            out["output_tail"] = json!(ran.output_tail);
            out["duration_ms"] = json!(ran.duration_ms);
        }
        if let Some(summary) = read_report(&report_path)["summary"].as_str() {
            out["summary"] = json!(truncate(summary, 4_000));
        }
        if is_git {
            match commit(&tree, data).await {
                Ok((sha, files)) => {
                    out["commit"] = json!(sha);
                    out["changed_files"] = json!(files);
                }
                Err(e) => return Ok(failed("commit", e, None, json!({}))),
            }
        } else {
            out["changed_files"] = json!([]);
        }
        Ok(json!({"type": types::TASK_COMPLETED, "data": out}))
    }
}

/// Commits what the run changed and points the plan task's branch at it; the commit (HEAD,
/// unchanged when nothing changed) and the files.
async fn commit(tree: &Path, data: &Value) -> Result<(String, Vec<String>), String> {
    // Staged, then named by `diff --cached`: a path per line, whatever its status (parsing
    // `status --porcelain` lost the first path's first letter once its leading space was
    // trimmed).
    git(tree, &["add", "-A"]).await?;
    let staged = git(
        tree,
        &[
            "-c",
            "core.quotepath=off",
            "diff",
            "--cached",
            "--name-only",
        ],
    )
    .await?;
    let files: Vec<String> = staged
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if !files.is_empty() {
        let message = format!(
            "{}\n\nPlan: {}\nTask: {}\nAttempt: {}\n",
            field(data, "title"),
            field(data, "plan_id"),
            field(data, "task_id"),
            data["attempt"]
        );
        git(tree, &["commit", "--quiet", "--no-verify", "-m", &message]).await?;
    }
    let sha = git(tree, &["rev-parse", "HEAD"]).await?;
    // A branch per plan task, so that its work is reachable from the repository:
    // `switchyard/plan/<plan>/<task>`.
    let branch = format!(
        "switchyard/plan/{}/{}",
        field(data, "plan_id"),
        field(data, "root_task_id")
    );
    if git(tree, &["check-ref-format", "--branch", &branch])
        .await
        .is_ok()
        && let Err(e) = git(tree, &["branch", "--force", &branch, &sha]).await
    {
        tracing::warn!(error = %e, branch, "cannot point the plan task's branch at its commit");
    }
    Ok((sha, files))
}

fn read_report(path: &Path) -> Value {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() <= 64 * 1024 => std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(Value::is_object)
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn copy_report(report: &Value, into: &mut Value) {
    if let Some(cause) = report["cause"].as_str()
        && switchyard_workflows::Cause::parse(cause).is_some()
    {
        into["reported_cause"] = json!(cause);
    }
    if let Some(summary) = report["summary"].as_str() {
        into["summary"] = json!(truncate(summary, 4_000));
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl Agent for RunnerAgent {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn long_running(&self) -> bool {
        true
    }

    fn work<'a>(
        &'a self,
        work: &'a WorkContext,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<Value, HandlerError>> {
        Box::pin(self.work_on(work, event))
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let Some(output) = ctx.work_output().cloned() else {
                return Ok(());
            };
            let (Some(ty), Some(data)) = (output["type"].as_str(), output.get("data")) else {
                return Ok(()); // skipped
            };
            let plan_id = field(&event.data, "plan_id");
            ctx.emit(ty, &stream(plan_id), data.clone())?;
            for message in output["send"].as_array().into_iter().flatten() {
                let to = message["to"].as_str().unwrap_or_default();
                let kind = message["type"].as_str().unwrap_or("note");
                let valid_to = to == "*" || switchyard_workflows::valid_role(to);
                let valid_kind = !kind.is_empty()
                    && kind.len() <= 63
                    && kind.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b)
                    });
                if !valid_to || !valid_kind {
                    tracing::warn!(agent = %self.manifest.name, to, kind, "the report asks to send a message with an invalid recipient or type; not sent");
                    continue;
                }
                let content = message.get("content").cloned().unwrap_or(Value::Null);
                ctx.send_message(to, kind, content, message["reply_to"].as_str())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

    use super::*;

    /// A modified file's path comes back whole, first or not (`status --porcelain` starts a
    /// modified file's line with a space, which trimming the output once ate).
    #[tokio::test]
    async fn a_commit_names_every_changed_file_whole() {
        let dir = std::env::temp_dir().join(format!("sy-runner-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("notes")).unwrap();
        git(&dir, &["init", "--quiet", "--initial-branch=main"])
            .await
            .unwrap();
        std::fs::write(dir.join("notes/intro.md"), "one\n").unwrap();
        git(&dir, &["add", "-A"]).await.unwrap();
        git(&dir, &["commit", "--quiet", "-m", "init"])
            .await
            .unwrap();

        std::fs::write(dir.join("notes/intro.md"), "two\n").unwrap();
        std::fs::write(dir.join("new file.md"), "new\n").unwrap();
        let data = json!({"title": "t", "plan_id": "p", "task_id": "a", "root_task_id": "a", "attempt": 1});
        let (sha, files) = commit(&dir, &data).await.unwrap();
        assert_eq!(files, ["new file.md", "notes/intro.md"]);
        assert_eq!(sha, git(&dir, &["rev-parse", "HEAD"]).await.unwrap());
        assert_eq!(
            git(&dir, &["rev-parse", "switchyard/plan/p/a"])
                .await
                .unwrap(),
            sha
        );
        // Nothing changed: no commit, no files.
        let (again, files) = commit(&dir, &data).await.unwrap();
        assert_eq!((again, files.len()), (sha, 0));
        let _ = std::fs::remove_dir_all(dir);
    }
}
