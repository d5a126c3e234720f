//! Slash commands in GitHub comments: `/switchyard approve <proposal>`, `/switchyard reject
//! <proposal> <reason>`, `/switchyard retro`, `/switchyard retry <dead-letter>`.
//!
//! A command is a line of its own that starts with `/switchyard`; other lines are prose. The
//! parser never fails: a line that is not a command is skipped, and a malformed command is
//! returned as [`Command::Invalid`] so the author can be told what is wrong.

/// Longest argument kept (ids are far shorter; a reason is one line).
const MAX_ARG: usize = 1_000;

/// One command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Approve a proposal.
    Approve {
        /// Its id.
        proposal: String,
    },
    /// Reject a proposal, with a reason.
    Reject {
        /// Its id.
        proposal: String,
        /// Why.
        reason: String,
    },
    /// Start a retrospective.
    Retro,
    /// Retry a dead-lettered event.
    Retry {
        /// The dead letter's id.
        dead_letter: String,
    },
    /// A `/switchyard` line that is not a valid command.
    Invalid {
        /// The line.
        line: String,
        /// What is wrong, with the usage.
        problem: String,
    },
}

impl Command {
    /// The command's name, for the record (`invalid` for a malformed one).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Approve { .. } => "approve",
            Self::Reject { .. } => "reject",
            Self::Retro => "retro",
            Self::Retry { .. } => "retry",
            Self::Invalid { .. } => "invalid",
        }
    }
}

const USAGE: &str = "usage: /switchyard approve <proposal> | reject <proposal> <reason> | retro | retry <dead-letter>";

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(MAX_ARG);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The commands in a comment, in order. Lines inside fenced code blocks and quoted lines
/// (`>`) are not commands.
pub fn parse(body: &str) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut in_fence = false;
    for line in body.lines() {
        let line = line.trim();
        if line.starts_with("```") || line.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let Some(rest) = line.strip_prefix("/switchyard") else {
            continue;
        };
        // `/switchyardx` is not ours.
        if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
            continue;
        }
        let rest = rest.trim();
        let (verb, args) = rest
            .split_once(char::is_whitespace)
            .map_or((rest, ""), |(v, a)| (v, a.trim()));
        let invalid = |problem: &str| Command::Invalid {
            line: clip(line),
            problem: format!("{problem}; {USAGE}"),
        };
        let command = match verb {
            "approve" => match args.split_whitespace().collect::<Vec<_>>()[..] {
                [id] if is_id(id) => Command::Approve {
                    proposal: id.to_owned(),
                },
                [] => invalid("approve needs a proposal id"),
                _ => invalid("approve takes one proposal id"),
            },
            "reject" => match args.split_once(char::is_whitespace) {
                Some((id, reason)) if is_id(id) && !reason.trim().is_empty() => Command::Reject {
                    proposal: id.to_owned(),
                    reason: clip(reason.trim()),
                },
                _ if args.is_empty() => invalid("reject needs a proposal id and a reason"),
                _ if is_id(args) => invalid("a rejection needs a reason"),
                _ => invalid("reject needs a proposal id and a reason"),
            },
            "retro" if args.is_empty() => Command::Retro,
            "retro" => invalid("retro takes no arguments"),
            "retry" => match args.split_whitespace().collect::<Vec<_>>()[..] {
                [id] if uuid::Uuid::parse_str(id).is_ok() => Command::Retry {
                    dead_letter: id.to_owned(),
                },
                _ => invalid("retry needs one dead-letter id (a UUID)"),
            },
            "" => invalid("no command"),
            other => invalid(&format!("unknown command {:?}", clip(other))),
        };
        commands.push(command);
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_lines_of_their_own() {
        let body = "Looks good.\n/switchyard approve 0191d2a4-7c1e\n\n/switchyard reject abc  the tests fail on main \n/switchyard retro\n";
        assert_eq!(
            parse(body),
            vec![
                Command::Approve {
                    proposal: "0191d2a4-7c1e".into()
                },
                Command::Reject {
                    proposal: "abc".into(),
                    reason: "the tests fail on main".into()
                },
                Command::Retro,
            ]
        );
    }

    #[test]
    fn prose_quotes_code_and_lookalikes_are_not_commands() {
        let body = "please /switchyard approve x\n> /switchyard approve y\n```\n/switchyard approve z\n```\n/switchyardapprove w";
        assert!(parse(body).is_empty(), "{:?}", parse(body));
    }

    #[test]
    fn malformed_commands_say_what_is_wrong() {
        let cases = [
            ("/switchyard", "no command"),
            ("/switchyard approve", "needs a proposal id"),
            ("/switchyard approve a b", "one proposal id"),
            ("/switchyard reject abc", "needs a reason"),
            ("/switchyard retry not-a-uuid", "UUID"),
            ("/switchyard deploy prod", "unknown command"),
            ("/switchyard approve $(rm -rf /)", "one proposal id"),
        ];
        for (line, problem) in cases {
            match &parse(line)[..] {
                [Command::Invalid { problem: p, .. }] => {
                    assert!(p.contains(problem), "{line}: {p}")
                }
                other => panic!("{line}: {other:?}"),
            }
        }
        let id = uuid::Uuid::now_v7().to_string();
        assert_eq!(
            parse(&format!("/switchyard retry {id}")),
            vec![Command::Retry { dead_letter: id }]
        );
    }
}
