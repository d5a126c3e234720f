//! How commands print their results (`--output text|json`) and how they end (exit codes).
//!
//! Exit codes, documented in `docs/cli.md`:
//! 0 done; 1 failed (anything else); 2 usage (bad arguments or values); 3 not found;
//! 4 conflict (already decided, already exists); 5 unavailable (PostgreSQL, NATS or GitHub
//! cannot be reached).

use std::process::ExitCode;

use serde::Serialize;

/// How a command prints what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum Output {
    /// For people: aligned lines and short sentences.
    #[default]
    Text,
    /// For scripts: one JSON document on stdout (JSON lines for `events tail`), errors as
    /// `{"error": {"kind", "message"}}` on stderr.
    Json,
}

impl Output {
    /// Prints `value` as JSON, or `text()` for people.
    pub(crate) fn print<T: Serialize>(
        self,
        value: &T,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        match self {
            Self::Json => println!("{}", serde_json::to_string_pretty(value)?),
            Self::Text => {
                let text = text();
                if !text.is_empty() {
                    println!("{text}");
                }
            }
        }
        Ok(())
    }
}

/// What went wrong, as far as the exit code is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Failed,
    Usage,
    NotFound,
    Conflict,
    Unavailable,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Self::Failed => 1,
            Self::Usage => 2,
            Self::NotFound => 3,
            Self::Conflict => 4,
            Self::Unavailable => 5,
        }
    }
}

/// An error with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Failure {
    pub(crate) kind: Kind,
    pub(crate) message: String,
}

/// `Err` of a usage error (a bad value the arguments parser could not catch).
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure {
        kind: Kind::Usage,
        message: message.into(),
    }
    .into()
}

/// `Err` of something that does not exist.
pub(crate) fn not_found(message: impl Into<String>) -> anyhow::Error {
    Failure {
        kind: Kind::NotFound,
        message: message.into(),
    }
    .into()
}

/// `Err` of a conflict.
pub(crate) fn conflict(message: impl Into<String>) -> anyhow::Error {
    Failure {
        kind: Kind::Conflict,
        message: message.into(),
    }
    .into()
}

/// `Err` of a dependency that cannot be reached.
pub(crate) fn unavailable(error: anyhow::Error) -> anyhow::Error {
    Failure {
        kind: Kind::Unavailable,
        message: format!("{error:#}"),
    }
    .into()
}

/// Prints `error` on stderr (as JSON in JSON mode) and gives its exit code.
pub(crate) fn fail(output: Output, error: &anyhow::Error) -> ExitCode {
    let kind = error
        .chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(Kind::Failed, |f| f.kind);
    let message = format!("{error:#}");
    match output {
        Output::Json => eprintln!(
            "{}",
            serde_json::json!({"error": {"kind": kind, "message": message}})
        ),
        Output::Text => eprintln!("error: {message}"),
    }
    ExitCode::from(kind.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_found_under_context() {
        use anyhow::Context as _;
        let error = Err::<(), _>(not_found("no proposal p1"))
            .context("showing p1")
            .unwrap_err();
        let kind = error
            .chain()
            .find_map(|e| e.downcast_ref::<Failure>())
            .map(|f| f.kind);
        assert_eq!(kind, Some(Kind::NotFound));
        assert_eq!(Kind::NotFound.code(), 3);
        assert_eq!(format!("{error:#}"), "showing p1: no proposal p1");
    }
}
