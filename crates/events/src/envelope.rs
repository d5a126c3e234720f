//! The CloudEvents 1.0 envelope as Switchyard stores it: events to append ([`NewEvent`]) and
//! events read back ([`RecordedEvent`]), with the extensions of DESIGN.md §2.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use cloudevents::{AttributesWriter as _, Event};
use serde_json::{Map, Value};

use crate::{EventId, EventType, Source, StreamId, Workspace, catalog::schema_uri};

/// The only `datacontenttype` Switchyard stores: event data is JSON, validated by its schema.
pub const JSON: &str = "application/json";

/// What a writer expects of the stream before its event is appended.
///
/// Versions count the events of a stream from 1; a stream that does not exist has version 0.
/// In a batch, the expectation of each event is checked against the stream as it is just
/// before that event, including the events of the batch before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    #[default]
    Any,
    /// The stream must not exist yet (extension value `none`).
    NoStream,
    /// The stream's last version must be exactly this one.
    Exactly(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `actual` satisfies this expectation.
    pub fn admits(self, actual: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == 0,
            Self::Exactly(n) => actual == n,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("none"),
            Self::Exactly(n) => write!(f, "{n}"),
        }
    }
}

/// An event about to be appended. Built by the HTTP binding, by agents and by the server
/// itself; the store validates `data` against the schema of `ty` before anything is written.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// CloudEvents `id`; with `source` and `workspace` the idempotency key.
    pub id: EventId,
    /// CloudEvents `source`.
    pub source: Source,
    /// CloudEvents `type`, also the schema's name.
    pub ty: EventType,
    /// The workspace extension: whose event this is.
    pub workspace: Workspace,
    /// CloudEvents `subject`: the stream the event belongs to.
    pub stream: StreamId,
    /// CloudEvents `time`; the store stamps the append time when absent.
    pub time: Option<DateTime<Utc>>,
    /// The JSON payload.
    pub data: Value,
    /// The workflow this event belongs to; defaults to the event's own id.
    pub correlation_id: Option<String>,
    /// The id of the event that caused this one.
    pub causation_id: Option<String>,
    /// W3C trace context of the producer.
    pub traceparent: Option<String>,
    /// Any other CloudEvents extension attributes, kept as given.
    pub extensions: Map<String, Value>,
    /// Optimistic concurrency: what the producer expects of `stream`.
    pub expected_version: ExpectedVersion,
}

impl NewEvent {
    /// A new event with a generated UUIDv7 id and no optional attributes set.
    pub fn new(
        workspace: Workspace,
        source: Source,
        ty: EventType,
        stream: StreamId,
        data: Value,
    ) -> Self {
        Self {
            id: EventId::generate(),
            source,
            ty,
            workspace,
            stream,
            time: None,
            data,
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            extensions: Map::new(),
            expected_version: ExpectedVersion::Any,
        }
    }

    /// Sets the expected stream version.
    #[must_use]
    pub fn expecting(mut self, expected: ExpectedVersion) -> Self {
        self.expected_version = expected;
        self
    }
}

/// A position in the global read order of the store: the writing transaction's id (`xid8`)
/// and the event's position. Readers only see transactions below the oldest one still
/// running, so a cursor never moves past an event that commits late.
///
/// Its text form `"<transaction>.<position>"` is opaque to clients; `"0"` is the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor {
    /// The `xid8` of the transaction that wrote the event.
    pub transaction: u64,
    /// The event's global position (its `sequence`).
    pub position: i64,
}

impl Cursor {
    /// Before the first event.
    pub const START: Cursor = Cursor {
        transaction: 0,
        position: 0,
    };
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::START {
            f.write_str("0")
        } else {
            write!(f, "{}.{}", self.transaction, self.position)
        }
    }
}

/// A cursor string that is not one the store handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor {0:?}: use \"0\" or a `next` value returned by the API")]
pub struct InvalidCursor(pub String);

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "0" {
            return Ok(Self::START);
        }
        let invalid = || InvalidCursor(s.chars().take(60).collect());
        let (tx, pos) = s.split_once('.').ok_or_else(invalid)?;
        let transaction = tx.parse().map_err(|_| invalid())?;
        let position: i64 = pos.parse().map_err(|_| invalid())?;
        if position < 0 {
            return Err(invalid());
        }
        Ok(Self {
            transaction,
            position,
        })
    }
}

/// An event as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Global position, unique and increasing in append order within a transaction; exposed as
    /// the `sequence` extension.
    pub position: i64,
    /// Where this event sits in the global read order.
    pub cursor: Cursor,
    /// The event's version within its stream, from 1.
    pub stream_version: u64,
    /// CloudEvents `id`.
    pub id: EventId,
    /// CloudEvents `source`.
    pub source: Source,
    /// CloudEvents `type`.
    pub ty: EventType,
    /// The workspace extension.
    pub workspace: Workspace,
    /// CloudEvents `subject`.
    pub stream: StreamId,
    /// CloudEvents `time`.
    pub time: DateTime<Utc>,
    /// The JSON payload.
    pub data: Value,
    /// Correlation id (the first event of a causal chain).
    pub correlation_id: String,
    /// Id of the causing event, if any.
    pub causation_id: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// Other extension attributes.
    pub extensions: Map<String, Value>,
    /// When the store committed the event.
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The event as a CloudEvents 1.0 [`Event`], with `dataschema` naming its catalog schema
    /// and the extensions `workspace`, `sequence`, `streamversion`, `correlationid`,
    /// `causationid` and `traceparent`.
    pub fn to_cloudevent(&self) -> Event {
        let mut event = Event::default();
        event.set_id(self.id.as_str());
        event.set_source(self.source.as_str());
        event.set_type(self.ty.as_str());
        event.set_subject(Some(self.stream.as_str()));
        event.set_time(Some(self.time));
        event.set_data(JSON, self.data.clone());
        // A URN built from a validated, percent-encoded type always parses.
        event.set_dataschema(url::Url::parse(&schema_uri(&self.ty)).ok());
        event.set_extension("workspace", self.workspace.as_str());
        event.set_extension("sequence", self.position);
        event.set_extension(
            "streamversion",
            i64::try_from(self.stream_version).unwrap_or(i64::MAX),
        );
        event.set_extension("correlationid", self.correlation_id.as_str());
        if let Some(causation) = &self.causation_id {
            event.set_extension("causationid", causation.as_str());
        }
        if let Some(traceparent) = &self.traceparent {
            event.set_extension("traceparent", traceparent.as_str());
        }
        for (name, value) in &self.extensions {
            match value {
                Value::Bool(b) => event.set_extension(name, *b),
                Value::Number(n) if n.is_i64() => {
                    event.set_extension(name, n.as_i64().unwrap_or_default())
                }
                Value::String(s) => event.set_extension(name, s.as_str()),
                other => event.set_extension(name, other.to_string()),
            }
        }
        event
    }

    /// The event in JSON structured mode (`application/cloudevents+json`), the same document
    /// as `serde_json::to_vec(&self.to_cloudevent())` (tested), written straight from the
    /// fields. The relay's hot path: the SDK's `Event` starts from a default that draws a
    /// random id, reads the host name and parses two URLs, for every event.
    pub fn to_structured_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&Structured(self))
    }
}

/// [`RecordedEvent::to_structured_json`]'s writer.
struct Structured<'a>(&'a RecordedEvent);

/// The value of one of Switchyard's own extension attributes.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Own<'a> {
    Str(&'a str),
    Int(i64),
}

impl serde::Serialize for Structured<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let event = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", "1.0")?;
        map.serialize_entry("id", event.id.as_str())?;
        map.serialize_entry("type", event.ty.as_str())?;
        map.serialize_entry("source", event.source.as_str())?;
        map.serialize_entry("datacontenttype", JSON)?;
        map.serialize_entry("dataschema", &schema_uri(&event.ty))?;
        map.serialize_entry("subject", event.stream.as_str())?;
        map.serialize_entry("time", &event.time)?;
        map.serialize_entry("data", &event.data)?;
        // The SDK keeps extensions in one map, where another extension of the same name
        // replaces these; so here too.
        let own = [
            ("workspace", Some(Own::Str(event.workspace.as_str()))),
            ("sequence", Some(Own::Int(event.position))),
            (
                "streamversion",
                Some(Own::Int(
                    i64::try_from(event.stream_version).unwrap_or(i64::MAX),
                )),
            ),
            ("correlationid", Some(Own::Str(&event.correlation_id))),
            ("causationid", event.causation_id.as_deref().map(Own::Str)),
            ("traceparent", event.traceparent.as_deref().map(Own::Str)),
        ];
        for (name, value) in own {
            if let Some(value) = value
                && !event.extensions.contains_key(name)
            {
                map.serialize_entry(name, &value)?;
            }
        }
        for (name, value) in &event.extensions {
            match value {
                Value::Bool(b) => map.serialize_entry(name, b)?,
                Value::Number(n) if n.is_i64() => {
                    map.serialize_entry(name, &n.as_i64().unwrap_or_default())?;
                }
                Value::String(s) => map.serialize_entry(name, s)?,
                other => map.serialize_entry(name, &other.to_string())?,
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        let c = Cursor {
            transaction: 7_000_123,
            position: 42,
        };
        assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
        assert_eq!("0".parse::<Cursor>().unwrap(), Cursor::START);
        for bad in ["", "x", "1", "1.x", "1.-3", "-1.2"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
        assert!(Cursor::START < c);
    }

    #[test]
    fn expected_version_rules() {
        assert!(ExpectedVersion::Any.admits(0));
        assert!(ExpectedVersion::Any.admits(9));
        assert!(ExpectedVersion::NoStream.admits(0));
        assert!(!ExpectedVersion::NoStream.admits(1));
        assert!(ExpectedVersion::Exactly(3).admits(3));
        assert!(!ExpectedVersion::Exactly(3).admits(4));
    }

    /// An approved proposal's event, as the store returns it.
    fn approved() -> RecordedEvent {
        RecordedEvent {
            position: 5,
            cursor: Cursor {
                transaction: 900,
                position: 5,
            },
            stream_version: 2,
            id: EventId::parse("e-1").unwrap(),
            source: Source::parse("/api").unwrap(),
            ty: EventType::parse("proposal.approved.v1").unwrap(),
            workspace: Workspace::parse("demo").unwrap(),
            stream: StreamId::parse("proposal/1").unwrap(),
            time: DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
                .unwrap()
                .to_utc(),
            data: serde_json::json!({"proposal_id": "1"}),
            correlation_id: "c-1".into(),
            causation_id: Some("e-0".into()),
            traceparent: None,
            extensions: Map::new(),
            recorded_at: Utc::now(),
        }
    }

    #[test]
    fn recorded_event_renders_as_cloudevent_json() {
        let event = approved();
        let json = serde_json::to_value(event.to_cloudevent()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["id"], "e-1");
        assert_eq!(json["subject"], "proposal/1");
        assert_eq!(json["sequence"], 5);
        assert_eq!(json["streamversion"], 2);
        assert_eq!(json["workspace"], "demo");
        assert_eq!(json["correlationid"], "c-1");
        assert_eq!(json["causationid"], "e-0");
        assert_eq!(
            json["dataschema"],
            "urn:switchyard:event:proposal.approved.v1"
        );
        assert_eq!(json["data"]["proposal_id"], "1");
        assert_eq!(json["datacontenttype"], "application/json");
    }

    /// The relay's writer and the SDK's write the same document, for events with and without
    /// each optional attribute and with extensions of every kind.
    #[test]
    fn structured_json_equals_the_sdks() {
        let mut extensions = Map::new();
        extensions.insert("flag".into(), serde_json::json!(true));
        extensions.insert("count".into(), serde_json::json!(-3));
        extensions.insert("note".into(), serde_json::json!("hi \"there\""));
        extensions.insert("ratio".into(), serde_json::json!(0.5));
        extensions.insert("list".into(), serde_json::json!([1, "a"]));
        let base = RecordedEvent {
            position: 9_007_199_254_740_993,
            stream_version: 17,
            source: Source::parse("/agents/coder").unwrap(),
            ty: EventType::parse("git.commit.v1").unwrap(),
            stream: StreamId::parse("repo/main").unwrap(),
            time: DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456789+02:00")
                .unwrap()
                .to_utc(),
            data: serde_json::json!({"sha": "abc", "files": ["a.rs"], "n": 1.5, "x": null}),
            causation_id: None,
            ..approved()
        };
        let mut full = base.clone();
        full.causation_id = Some("e-0".into());
        full.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        full.extensions = extensions;
        let mut null_data = base.clone();
        null_data.data = Value::Null;
        for event in [base, full, null_data] {
            let ours: Value = serde_json::from_slice(&event.to_structured_json().unwrap()).unwrap();
            let sdk = serde_json::to_value(event.to_cloudevent()).unwrap();
            assert_eq!(ours, sdk);
        }
    }
}
