//! Typed identifiers, parsed at the edge: once a value has one of these types it is valid.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier of some kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is invalid: {reason}")]
pub struct InvalidId {
    /// Which kind of identifier was parsed (`"event type"`, `"workspace id"`, …).
    pub what: &'static str,
    /// The offending input, cut to a readable length.
    pub value: String,
    /// What rule it breaks.
    pub reason: &'static str,
}

impl InvalidId {
    fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        let value: String = value.chars().take(80).collect();
        Self {
            what,
            value,
            reason,
        }
    }
}

fn printable(s: &str) -> bool {
    s.chars().all(|c| !c.is_control())
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(&s)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }
    };
}

string_id!(
    /// A CloudEvents `type`, which also names the schema of the event's data.
    ///
    /// Any non-empty printable string of at most 255 characters is a valid CloudEvents type;
    /// Switchyard's own types are also [canonical](EventType::is_canonical):
    /// `<noun>.<past-tense verb>.v<N>`, e.g. `proposal.approved.v1`.
    EventType
);

impl EventType {
    /// Longest accepted type string.
    pub const MAX_LEN: usize = 255;

    /// Parses a CloudEvents `type` attribute.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        const WHAT: &str = "event type";
        if s.is_empty() {
            return Err(InvalidId::new(WHAT, s, "must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(InvalidId::new(WHAT, s, "is longer than 255 bytes"));
        }
        if !printable(s) {
            return Err(InvalidId::new(WHAT, s, "contains control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    /// Parses a type that must follow Switchyard's naming rule `<noun>.<verb>.v<N>`: two or more
    /// lowercase segments (`[a-z][a-z0-9_]*`) and a version segment `v1`, `v2`, ….
    pub fn parse_canonical(s: &str) -> Result<Self, InvalidId> {
        let ty = Self::parse(s)?;
        if ty.is_canonical() {
            Ok(ty)
        } else {
            Err(InvalidId::new(
                "event type",
                s,
                "must read <noun>.<past-tense verb>.v<N>, e.g. proposal.approved.v1",
            ))
        }
    }

    /// Whether the type follows the `<noun>.<verb>.v<N>` rule of Switchyard's own catalog.
    pub fn is_canonical(&self) -> bool {
        let segments: Vec<&str> = self.0.split('.').collect();
        let Some((version, names)) = segments.split_last() else {
            return false;
        };
        let version_ok = version.strip_prefix('v').is_some_and(|n| {
            !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())
        });
        let name_ok = |seg: &&str| {
            let mut bytes = seg.bytes();
            bytes.next().is_some_and(|b| b.is_ascii_lowercase())
                && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        version_ok && names.len() >= 2 && names.iter().all(name_ok)
    }
}

string_id!(
    /// A workspace: one team's project, the unit of isolation. Lowercase letters, digits and
    /// `-`, starting with a letter or digit, at most 63 characters — so it is also a valid
    /// NATS subject token and DNS label.
    Workspace
);

impl Workspace {
    /// Parses a workspace id.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        const WHAT: &str = "workspace id";
        let bytes = s.as_bytes();
        if bytes.is_empty() || bytes.len() > 63 {
            return Err(InvalidId::new(WHAT, s, "must be 1 to 63 characters long"));
        }
        let ok_first = bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit();
        let ok_rest = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok_first && ok_rest {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidId::new(
                WHAT,
                s,
                "may hold only a-z, 0-9 and '-', and must start with a letter or digit",
            ))
        }
    }
}

string_id!(
    /// The stream (aggregate) an event belongs to, carried as the CloudEvents `subject`,
    /// e.g. `proposal/0192f5d2-…` or `agent/spec`. Streams are scoped by workspace.
    StreamId
);

impl StreamId {
    /// Longest accepted stream id.
    pub const MAX_LEN: usize = 200;

    /// Parses a stream id: 1 to 200 bytes, no whitespace or control characters.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        const WHAT: &str = "stream id";
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(InvalidId::new(WHAT, s, "must be 1 to 200 bytes long"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidId::new(
                WHAT,
                s,
                "must not contain whitespace or control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

string_id!(
    /// A CloudEvents `id`. Switchyard generates UUIDv7 ids (time-ordered); a producer may
    /// supply its own (any printable string up to 200 bytes), which makes its retries
    /// idempotent: `(workspace, source, id)` is unique for the lifetime of the store.
    EventId
);

impl EventId {
    /// A new time-ordered UUIDv7 id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// Parses a caller-supplied id.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        const WHAT: &str = "event id";
        if s.is_empty() || s.len() > 200 {
            return Err(InvalidId::new(WHAT, s, "must be 1 to 200 bytes long"));
        }
        if !printable(s) {
            return Err(InvalidId::new(WHAT, s, "contains control characters"));
        }
        Ok(Self(s.to_owned()))
    }
}

string_id!(
    /// A CloudEvents `source`: who produced the event, as a URI reference such as `/api`,
    /// `/agents/spec` or `/github/acme/widgets`.
    Source
);

impl Source {
    /// Parses a `source`: 1 to 255 printable bytes without whitespace.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        const WHAT: &str = "source";
        if s.is_empty() || s.len() > 255 {
            return Err(InvalidId::new(WHAT, s, "must be 1 to 255 bytes long"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidId::new(
                WHAT,
                s,
                "must be a URI reference without whitespace",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_types() {
        for ok in [
            "proposal.approved.v1",
            "agent.memory.recorded.v12",
            "git.commit_failed.v1",
        ] {
            assert!(EventType::parse_canonical(ok).is_ok(), "{ok}");
        }
        for bad in [
            "proposal.approved",
            "approved.v1",
            "Proposal.approved.v1",
            "proposal.approved.v0",
            "proposal.approved.v01",
            "proposal..v1",
            "proposal.approved.vx",
            "com.example.thing happened.v1",
        ] {
            assert!(EventType::parse_canonical(bad).is_err(), "{bad}");
        }
        // Any printable string is a valid CloudEvents type, just not a canonical one.
        let custom = EventType::parse("com.example.Order Placed").unwrap();
        assert!(!custom.is_canonical());
        assert!(EventType::parse("").is_err());
        assert!(EventType::parse("a\nb").is_err());
    }

    #[test]
    fn workspaces() {
        for ok in ["demo", "a", "team-42", "0abc"] {
            assert!(Workspace::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "-x", "Demo", "a.b", "a b", "a*", long.as_str()] {
            assert!(Workspace::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn streams_sources_and_ids() {
        assert!(StreamId::parse("proposal/123").is_ok());
        assert!(StreamId::parse("a b").is_err());
        assert!(StreamId::parse(&"s".repeat(201)).is_err());
        assert!(Source::parse("/agents/spec").is_ok());
        assert!(Source::parse("").is_err());
        let generated = EventId::generate();
        let uuid = uuid::Uuid::parse_str(generated.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert!(EventId::parse("delivery-1").is_ok());
        assert!(EventId::parse("").is_err());
    }

    #[test]
    fn serde_parses_at_the_edge() {
        let ws: Result<Workspace, _> = serde_json::from_str("\"Bad Name\"");
        assert!(ws.is_err());
        let ws: Workspace = serde_json::from_str("\"good\"").unwrap();
        assert_eq!(serde_json::to_string(&ws).unwrap(), "\"good\"");
    }
}
