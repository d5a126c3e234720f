//! Parsing a CloudEvent in the JSON (structured) format into a [`NewEvent`], with the JSON
//! pointer of the first thing that is wrong. The HTTP binary mode maps its `ce-*` headers to
//! the same attributes and uses the same rules.

use chrono::DateTime;
use serde_json::{Map, Value};

use crate::{EventId, EventType, ExpectedVersion, NewEvent, Source, StreamId, Workspace};

/// Most extension attributes an event may carry besides Switchyard's own.
const MAX_EXTENSIONS: usize = 20;
/// Longest extension value, correlation or causation id.
const MAX_ATTRIBUTE_LEN: usize = 1024;

/// Why a CloudEvent was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {pointer})")]
pub struct InvalidEvent {
    /// JSON pointer to the offending member of the CloudEvent (`""` is the event itself).
    pub pointer: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl InvalidEvent {
    /// An error at `pointer`.
    pub fn at(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            message: message.into(),
        }
    }

    /// The same error, for an event at `index` of a batch.
    #[must_use]
    pub fn in_batch(self, index: usize) -> Self {
        Self {
            pointer: format!("/{index}{}", self.pointer),
            message: self.message,
        }
    }
}

/// Attributes that only the store sets.
const SERVER_OWNED: &[&str] = &["sequence", "streamversion"];

/// Whether a media type denotes JSON (`application/json`, `text/json`, `…+json`), ignoring
/// parameters such as `charset`.
pub fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Parses one CloudEvent (JSON format) posted to `workspace`.
///
/// `id` and `time` are optional (the store generates a UUIDv7 and stamps the time); `subject`
/// is required, since it names the stream. `dataschema`, when present, must be the catalog's
/// URI for the type: the schema always comes from the catalog. The `workspace` extension, when present, must name
/// `workspace`; `sequence` and `streamversion` are set by the store and refused here.
pub fn parse_event(value: Value, workspace: &Workspace) -> Result<NewEvent, InvalidEvent> {
    let Value::Object(mut attrs) = value else {
        return Err(InvalidEvent::at("", "a CloudEvent must be a JSON object"));
    };

    match attrs.remove("specversion") {
        Some(Value::String(v)) if v == "1.0" => {}
        Some(_) => {
            return Err(InvalidEvent::at(
                "/specversion",
                "specversion must be \"1.0\"",
            ));
        }
        None => {
            return Err(InvalidEvent::at(
                "/specversion",
                "required attribute is missing",
            ));
        }
    }
    let id = match take_string(&mut attrs, "id")? {
        Some(id) => EventId::parse(&id).map_err(|e| InvalidEvent::at("/id", e.reason))?,
        None => EventId::generate(),
    };
    let source = required_string(&mut attrs, "source")?;
    let source = Source::parse(&source).map_err(|e| InvalidEvent::at("/source", e.reason))?;
    let ty = required_string(&mut attrs, "type")?;
    let ty = EventType::parse(&ty).map_err(|e| InvalidEvent::at("/type", e.reason))?;
    let stream = take_string(&mut attrs, "subject")?.ok_or_else(|| {
        InvalidEvent::at(
            "/subject",
            "required: the subject names the stream the event belongs to",
        )
    })?;
    let stream = StreamId::parse(&stream).map_err(|e| InvalidEvent::at("/subject", e.reason))?;
    let time = take_string(&mut attrs, "time")?
        .map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.to_utc())
                .map_err(|_| InvalidEvent::at("/time", "time must be an RFC 3339 timestamp"))
        })
        .transpose()?;
    if let Some(content_type) = take_string(&mut attrs, "datacontenttype")?
        && !is_json_media_type(&content_type)
    {
        return Err(InvalidEvent::at(
            "/datacontenttype",
            "only JSON data is accepted (application/json or a +json media type)",
        ));
    }
    // Schemas come only from the catalog, and nothing named in an event is ever fetched: a
    // `dataschema` other than the catalog's own URI for the type is refused rather than
    // silently ignored, so a producer learns that its schema is not the one applied.
    if let Some(dataschema) = take_string(&mut attrs, "dataschema")?
        && dataschema != crate::catalog::schema_uri(&ty)
    {
        return Err(InvalidEvent::at(
            "/dataschema",
            format!(
                "dataschema must be absent or {}: schemas come from the catalog, and URLs in events are never fetched",
                crate::catalog::schema_uri(&ty)
            ),
        ));
    }
    if attrs.contains_key("data_base64") {
        return Err(InvalidEvent::at(
            "/data_base64",
            "binary data is not accepted: send JSON in `data`",
        ));
    }
    let data = attrs.remove("data").unwrap_or(Value::Null);

    if let Some(ws) = take_string(&mut attrs, "workspace")?
        && ws != workspace.as_str()
    {
        return Err(InvalidEvent::at(
            "/workspace",
            format!(
                "the event names workspace {ws:?} but was posted to {:?}",
                workspace.as_str()
            ),
        ));
    }
    let correlation_id = take_bounded(&mut attrs, "correlationid")?;
    let causation_id = take_bounded(&mut attrs, "causationid")?;
    let traceparent = take_string(&mut attrs, "traceparent")?;
    if let Some(tp) = &traceparent
        && !is_traceparent(tp)
    {
        return Err(InvalidEvent::at(
            "/traceparent",
            "traceparent must be a W3C trace context: 00-<32 hex>-<16 hex>-<2 hex>",
        ));
    }
    let expected_version = match attrs.remove("expectedversion") {
        None => ExpectedVersion::Any,
        Some(v) => parse_expected_version(&v)?,
    };

    for owned in SERVER_OWNED {
        if attrs.contains_key(*owned) {
            return Err(InvalidEvent::at(
                format!("/{owned}"),
                format!("{owned} is set by the store and may not be supplied"),
            ));
        }
    }
    if attrs.len() > MAX_EXTENSIONS {
        return Err(InvalidEvent::at(
            "",
            format!("at most {MAX_EXTENSIONS} extension attributes are accepted"),
        ));
    }
    let mut extensions = Map::new();
    for (name, value) in attrs {
        let pointer = format!("/{}", escape_pointer(&name));
        let valid_name = !name.is_empty()
            && name.len() <= 20
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid_name {
            return Err(InvalidEvent::at(
                pointer,
                "unknown attribute: extension names are 1 to 20 characters of a-z and 0-9",
            ));
        }
        match &value {
            Value::String(s) if s.len() <= MAX_ATTRIBUTE_LEN => {}
            Value::Bool(_) => {}
            Value::Number(n) if n.is_i64() => {}
            _ => {
                return Err(InvalidEvent::at(
                    pointer,
                    "extension values must be a string (at most 1 KiB), an integer or a boolean",
                ));
            }
        }
        extensions.insert(name, value);
    }

    Ok(NewEvent {
        id,
        source,
        ty,
        workspace: workspace.clone(),
        stream,
        time,
        data,
        correlation_id,
        causation_id,
        traceparent,
        extensions,
        expected_version,
    })
}

/// Parses the `expectedversion` extension: a number, a numeric string (binary mode), `none`
/// (the stream must not exist) or `any`.
pub fn parse_expected_version(value: &Value) -> Result<ExpectedVersion, InvalidEvent> {
    let invalid = || {
        InvalidEvent::at(
            "/expectedversion",
            "expectedversion must be a stream version (0 or more), \"none\" or \"any\"",
        )
    };
    match value {
        Value::Number(n) => n.as_u64().map(ExpectedVersion::Exactly).ok_or_else(invalid),
        Value::String(s) if s == "none" => Ok(ExpectedVersion::NoStream),
        Value::String(s) if s == "any" => Ok(ExpectedVersion::Any),
        Value::String(s) => s
            .parse()
            .map(ExpectedVersion::Exactly)
            .map_err(|_| invalid()),
        _ => Err(invalid()),
    }
}

fn take_string(attrs: &mut Map<String, Value>, name: &str) -> Result<Option<String>, InvalidEvent> {
    match attrs.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(InvalidEvent::at(
            format!("/{name}"),
            format!("{name} must be a string"),
        )),
    }
}

fn required_string(attrs: &mut Map<String, Value>, name: &str) -> Result<String, InvalidEvent> {
    take_string(attrs, name)?
        .ok_or_else(|| InvalidEvent::at(format!("/{name}"), "required attribute is missing"))
}

fn take_bounded(
    attrs: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<String>, InvalidEvent> {
    let value = take_string(attrs, name)?;
    if value
        .as_ref()
        .is_some_and(|v| v.is_empty() || v.len() > 200)
    {
        return Err(InvalidEvent::at(
            format!("/{name}"),
            format!("{name} must be 1 to 200 bytes"),
        ));
    }
    Ok(value)
}

fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, len: usize| {
        p.len() == len
            && p.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// Escapes a key for use in a JSON pointer (RFC 6901).
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ws() -> Workspace {
        Workspace::parse("demo").unwrap()
    }

    fn valid() -> Value {
        json!({
            "specversion": "1.0",
            "id": "evt-1",
            "source": "/cli/demo",
            "type": "agent.memory.recorded.v1",
            "subject": "agent/demo",
            "time": "2026-11-22T10:00:00Z",
            "datacontenttype": "application/json; charset=utf-8",
            "correlationid": "corr-1",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "expectedversion": "none",
            "team": "core",
            "data": {"agent": "demo", "key": "greeting", "value": "hello"}
        })
    }

    #[test]
    fn parses_a_complete_event() {
        let event = parse_event(valid(), &ws()).unwrap();
        assert_eq!(event.id.as_str(), "evt-1");
        assert_eq!(event.stream.as_str(), "agent/demo");
        assert_eq!(event.expected_version, ExpectedVersion::NoStream);
        assert_eq!(event.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(event.extensions["team"], "core");
        assert!(event.time.is_some());
    }

    #[test]
    fn generates_an_id_when_absent() {
        let mut value = valid();
        value.as_object_mut().unwrap().remove("id");
        let event = parse_event(value, &ws()).unwrap();
        assert_eq!(
            uuid::Uuid::parse_str(event.id.as_str())
                .unwrap()
                .get_version_num(),
            7
        );
    }

    #[test]
    fn each_bad_attribute_is_named_by_its_pointer() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("specversion", json!("0.3"), "/specversion"),
            ("source", json!(""), "/source"),
            ("type", json!(7), "/type"),
            ("subject", json!("has space"), "/subject"),
            ("time", json!("yesterday"), "/time"),
            ("datacontenttype", json!("text/plain"), "/datacontenttype"),
            ("data_base64", json!("aGk="), "/data_base64"),
            ("workspace", json!("other"), "/workspace"),
            ("traceparent", json!("00-xyz"), "/traceparent"),
            ("expectedversion", json!(-1), "/expectedversion"),
            ("sequence", json!(5), "/sequence"),
            ("Bad-Name", json!("x"), "/Bad-Name"),
            ("nested", json!({"a": 1}), "/nested"),
            ("correlationid", json!(""), "/correlationid"),
        ];
        for (attr, bad, pointer) in cases {
            let mut value = valid();
            value[attr] = bad;
            let err = parse_event(value, &ws()).unwrap_err();
            assert_eq!(err.pointer, pointer, "{attr}: {err}");
        }
        for required in ["specversion", "source", "type", "subject"] {
            let mut value = valid();
            value.as_object_mut().unwrap().remove(required);
            let err = parse_event(value, &ws()).unwrap_err();
            assert_eq!(err.pointer, format!("/{required}"));
        }
        assert_eq!(parse_event(json!([1]), &ws()).unwrap_err().pointer, "");
        let err = parse_event(valid(), &ws())
            .map(|_| ())
            .and_then(|()| parse_event(json!("x"), &ws()).map(|_| ()));
        assert_eq!(err.unwrap_err().in_batch(3).pointer, "/3");
    }

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("Application/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/vnd.acme+json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type("application/cloudevents-batch"));
    }
}

/// Binary mode: the `ce-*` attributes of an HTTP request (header names lowercase, values as
/// sent) percent-decoded into the attributes of a structured event. Every `%` must start an
/// escape (`%` and two hex digits), and the decoded bytes must be UTF-8; the pointer names the
/// attribute. Headers without the `ce-` prefix are skipped.
pub fn binary_attributes<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Map<String, Value>, InvalidEvent> {
    let mut attrs = Map::new();
    for (name, value) in headers {
        let Some(attr) = name.strip_prefix("ce-") else {
            continue;
        };
        let at = || format!("/{}", escape_pointer(attr));
        let raw = std::str::from_utf8(value)
            .ok()
            .filter(|s| s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
            .ok_or_else(|| {
                InvalidEvent::at(at(), format!("header {name} must be visible ASCII"))
            })?;
        let bytes = raw.as_bytes();
        let malformed = bytes.iter().enumerate().any(|(i, b)| {
            *b == b'%'
                && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        });
        if malformed {
            return Err(InvalidEvent::at(
                at(),
                format!(
                    "header {name} has a malformed percent-encoding (% must be followed by two hex digits)"
                ),
            ));
        }
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| {
                InvalidEvent::at(
                    at(),
                    format!("header {name} is not valid percent-encoded UTF-8"),
                )
            })?;
        attrs.insert(attr.to_owned(), Value::String(decoded.into_owned()));
    }
    Ok(attrs)
}

/// Why a batch was refused as a whole (before any of its events is looked at).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The body is not a JSON array.
    #[error("a batch must be a JSON array of CloudEvents")]
    NotAnArray,
    /// The array is empty.
    #[error("a batch must hold at least one event")]
    Empty,
    /// More events than allowed.
    #[error("a batch may hold at most {max} events, this one holds {len}")]
    TooLarge {
        /// Events in the batch.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// One event is invalid; its pointer starts with its index.
    #[error(transparent)]
    Event(#[from] InvalidEvent),
}

/// Batch mode: a JSON array of structured CloudEvents, 1 to `max` of them, each parsed by
/// [`parse_event`]; the first invalid one is named by its index (`/3/type`).
pub fn parse_batch(
    value: Value,
    workspace: &Workspace,
    max: usize,
) -> Result<Vec<NewEvent>, BatchError> {
    let Value::Array(items) = value else {
        return Err(BatchError::NotAnArray);
    };
    if items.is_empty() {
        return Err(BatchError::Empty);
    }
    if items.len() > max {
        return Err(BatchError::TooLarge {
            len: items.len(),
            max,
        });
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_event(item, workspace).map_err(|e| BatchError::Event(e.in_batch(i))))
        .collect()
}
