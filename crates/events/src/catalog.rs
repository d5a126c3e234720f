//! The schema catalog: one JSON Schema per event type and version. Switchyard's own schemas
//! (the folder `events/`) are compiled into the binary; teams add theirs at run time from a
//! directory (`SWITCHYARD_EVENTS_DIR`), one `<type>.json` per type.
//!
//! Schemas never load anything from the network: remote `$ref`s are refused when a schema is
//! compiled, and an event's own `dataschema` is never fetched.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde_json::Value;

use crate::EventType;

include!(concat!(env!("OUT_DIR"), "/builtin_schemas.rs"));

/// At most this many violations are reported for one payload.
const MAX_VIOLATIONS: usize = 10;

/// The `dataschema` URI of an event type: `urn:switchyard:event:<type>`, percent-encoding any
/// character that is not unreserved in a URI.
pub fn schema_uri(ty: &EventType) -> String {
    let mut uri = String::from("urn:switchyard:event:");
    for byte in ty.as_str().bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            uri.push(char::from(byte));
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri
}

/// Where a schema came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Compiled in from `events/`.
    Builtin,
    /// Loaded at start from this file.
    File(PathBuf),
}

/// One schema of the catalog.
#[derive(Debug)]
pub struct Schema {
    ty: EventType,
    document: Arc<Value>,
    validator: jsonschema::Validator,
    origin: Origin,
}

impl Schema {
    /// The event type this schema describes.
    pub fn event_type(&self) -> &EventType {
        &self.ty
    }

    /// The JSON Schema document.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Where the schema came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The schema's `description`, if it has one.
    pub fn description(&self) -> Option<&str> {
        self.document.get("description").and_then(Value::as_str)
    }
}

/// One way in which a payload breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer into the payload (`""` is the payload itself).
    pub pointer: String,
    /// What is wrong, without echoing the offending value.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "at {at}: {}", self.message)
    }
}

/// Why an event's data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The catalog has no schema for this type.
    #[error("unknown event type {0}: the catalog has no schema for it")]
    UnknownType(EventType),
    /// The data breaks the type's schema; the first violations, in document order.
    #[error("data does not match the schema of {ty}: {}", .violations.first().map(ToString::to_string).unwrap_or_default())]
    Invalid {
        /// The event type whose schema was applied.
        ty: EventType,
        /// At least one violation.
        violations: Vec<Violation>,
    },
}

/// Why the catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The run-time schema directory or one of its files could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A schema file is not JSON, or not a valid JSON Schema.
    #[error("schema {name} is invalid: {reason}")]
    InvalidSchema {
        /// The file name or built-in type.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file name is not a valid event type, or a built-in type breaks the naming rule.
    #[error("schema {name}: {reason}")]
    InvalidType {
        /// The file name or built-in type.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A run-time schema would replace a built-in one.
    #[error(
        "{path} would replace the built-in schema of {ty}; publish a new version (.v2) instead"
    )]
    Shadowed {
        /// The file.
        path: PathBuf,
        /// The built-in type it names.
        ty: EventType,
    },
}

/// The set of known event types and their compiled schemas.
#[derive(Debug)]
pub struct Catalog {
    schemas: BTreeMap<EventType, Schema>,
}

impl Catalog {
    /// The schemas compiled into the binary from `events/`.
    pub fn builtin() -> Result<Self, CatalogError> {
        let mut schemas = BTreeMap::new();
        for (name, text) in BUILTIN_SCHEMAS {
            let ty = EventType::parse_canonical(name).map_err(|e| CatalogError::InvalidType {
                name: (*name).to_owned(),
                reason: e.to_string(),
            })?;
            let document: Value =
                serde_json::from_str(text).map_err(|e| CatalogError::InvalidSchema {
                    name: (*name).to_owned(),
                    reason: e.to_string(),
                })?;
            let schema = compile(ty.clone(), document, Origin::Builtin)?;
            schemas.insert(ty, schema);
        }
        Ok(Self { schemas })
    }

    /// The built-in schemas plus, when `dir` is given, every `<type>.json` in it.
    pub fn load(dir: Option<&Path>) -> Result<Self, CatalogError> {
        let mut catalog = Self::builtin()?;
        if let Some(dir) = dir {
            catalog.extend_from_dir(dir)?;
        }
        Ok(catalog)
    }

    /// Adds every `<type>.json` schema found in `dir` (not recursive); returns how many were
    /// added. Any CloudEvents `type` string is allowed there. All or nothing: on error the
    /// catalog is unchanged.
    pub fn extend_from_dir(&mut self, dir: &Path) -> Result<usize, CatalogError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CatalogError::Io { path, source }
        };
        let mut added = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let ty = EventType::parse(name).map_err(|e| CatalogError::InvalidType {
                name: path.display().to_string(),
                reason: e.to_string(),
            })?;
            if self.schemas.contains_key(&ty) {
                return Err(CatalogError::Shadowed { path, ty });
            }
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let document: Value =
                serde_json::from_str(&text).map_err(|e| CatalogError::InvalidSchema {
                    name: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            added.push(compile(ty, document, Origin::File(path))?);
        }
        let count = added.len();
        for schema in added {
            self.schemas.insert(schema.ty.clone(), schema);
        }
        Ok(count)
    }

    /// The schema of `ty`, if the catalog knows the type.
    pub fn get(&self, ty: &str) -> Option<&Schema> {
        // Lookups by &str: EventType orders exactly like its string.
        self.schemas
            .range::<str, _>((std::ops::Bound::Included(ty), std::ops::Bound::Included(ty)))
            .next()
            .map(|(_, schema)| schema)
    }

    /// Every schema, ordered by type.
    pub fn iter(&self) -> impl Iterator<Item = &Schema> {
        self.schemas.values()
    }

    /// How many types the catalog knows.
    pub fn len(&self) -> usize {
        self.schemas.len()
    }

    /// Whether the catalog is empty (it never is: the built-in types are always there).
    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
    }

    /// Checks `data` against the schema of `ty`. Violation pointers are relative to `data`.
    pub fn validate(&self, ty: &EventType, data: &Value) -> Result<(), DataError> {
        let schema = self
            .get(ty.as_str())
            .ok_or_else(|| DataError::UnknownType(ty.clone()))?;
        let violations: Vec<Violation> = schema
            .validator
            .iter_errors(data)
            .take(MAX_VIOLATIONS)
            .map(|error| Violation {
                pointer: error.instance_path().as_str().to_owned(),
                message: error.masked().to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(DataError::Invalid {
                ty: ty.clone(),
                violations,
            })
        }
    }
}

impl std::borrow::Borrow<str> for EventType {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

fn compile(ty: EventType, document: Value, origin: Origin) -> Result<Schema, CatalogError> {
    let name = match &origin {
        Origin::Builtin => ty.to_string(),
        Origin::File(path) => path.display().to_string(),
    };
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&document)
        .map_err(|e| CatalogError::InvalidSchema {
            name,
            reason: e.to_string(),
        })?;
    Ok(Schema {
        ty,
        document: Arc::new(document),
        validator,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The types the foundation promises; more may be added, none removed.
    const REQUIRED: &[&str] = &[
        "workspace.created.v1",
        "proposal.created.v1",
        "proposal.approved.v1",
        "proposal.rejected.v1",
        "git.commit.v1",
        "git.commit_failed.v1",
        "agent.registered.v1",
        "agent.memory.recorded.v1",
        "agent.failed.v1",
        "artifact.updated.v1",
        "retrospective.trigger.v1",
        "retrospective.completed.v1",
    ];

    #[test]
    fn every_required_type_is_in_the_catalog() {
        let catalog = Catalog::builtin().unwrap();
        for ty in REQUIRED {
            assert!(catalog.get(ty).is_some(), "{ty} has no schema in events/");
        }
    }

    /// Every schema carries examples that pass and rejects an empty object: each type's own
    /// test, driven by its schema file.
    #[test]
    fn every_schema_accepts_its_examples_and_rejects_an_empty_object() {
        let catalog = Catalog::builtin().unwrap();
        for schema in catalog.iter() {
            let ty = schema.event_type();
            let examples = schema.document()["examples"]
                .as_array()
                .unwrap_or_else(|| panic!("{ty}: the schema has no `examples`"));
            assert!(!examples.is_empty(), "{ty}: no examples");
            for (i, example) in examples.iter().enumerate() {
                if let Err(e) = catalog.validate(ty, example) {
                    panic!("{ty}: example {i} is invalid: {e}");
                }
            }
            assert!(
                catalog.validate(ty, &json!({})).is_err(),
                "{ty}: an empty object must be refused"
            );
            assert!(schema.description().is_some(), "{ty}: no description");
        }
    }

    #[test]
    fn every_schema_is_documented_in_the_catalog_doc() {
        let doc = include_str!("../../../docs/events.md");
        for schema in Catalog::builtin().unwrap().iter() {
            let ty = schema.event_type().as_str();
            assert!(
                doc.contains(&format!("`{ty}`")),
                "docs/events.md does not list {ty}"
            );
        }
    }

    #[test]
    fn violations_name_the_json_pointer() {
        let catalog = Catalog::builtin().unwrap();
        let ty = EventType::parse("proposal.approved.v1").unwrap();
        let mut data = catalog.get(ty.as_str()).unwrap().document()["examples"][0].clone();
        data["content_hash"] = json!(42);
        let DataError::Invalid { violations, .. } = catalog.validate(&ty, &data).unwrap_err()
        else {
            panic!("expected a schema violation");
        };
        assert_eq!(violations[0].pointer, "/content_hash");
        assert!(
            !violations[0].message.contains("42"),
            "values are not echoed"
        );
    }

    #[test]
    fn unknown_types_are_refused() {
        let catalog = Catalog::builtin().unwrap();
        let ty = EventType::parse("nothing.happened.v1").unwrap();
        assert_eq!(
            catalog.validate(&ty, &json!({})),
            Err(DataError::UnknownType(ty))
        );
    }

    #[test]
    fn run_time_schemas_extend_the_catalog() {
        let dir = std::env::temp_dir().join(format!("sy-catalog-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("com.example.Order Placed.json"),
            r#"{"type":"object","required":["order"],"properties":{"order":{"type":"string"}}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("README.txt"), "not a schema").unwrap();
        let catalog = Catalog::load(Some(&dir)).unwrap();
        let ty = EventType::parse("com.example.Order Placed").unwrap();
        assert!(catalog.validate(&ty, &json!({"order": "o-1"})).is_ok());
        assert!(catalog.validate(&ty, &json!({"order": 1})).is_err());
        assert_eq!(
            schema_uri(&ty),
            "urn:switchyard:event:com.example.Order%20Placed"
        );

        // A file may not replace a built-in schema, and a broken schema names its file.
        std::fs::write(dir.join("proposal.approved.v1.json"), "{}").unwrap();
        assert!(matches!(
            Catalog::load(Some(&dir)),
            Err(CatalogError::Shadowed { .. })
        ));
        std::fs::remove_file(dir.join("proposal.approved.v1.json")).unwrap();
        std::fs::write(dir.join("broken.thing.v1.json"), r#"{"type": 12}"#).unwrap();
        let err = Catalog::load(Some(&dir)).unwrap_err().to_string();
        assert!(err.contains("broken.thing.v1.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remote_refs_are_never_fetched() {
        let document = json!({"$ref": "http://127.0.0.1:9/schema.json"});
        let ty = EventType::parse("remote.ref.v1").unwrap();
        assert!(compile(ty, document, Origin::Builtin).is_err());
    }
}
