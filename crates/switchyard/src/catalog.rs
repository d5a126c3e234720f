//! `switchyard catalog`: the event types of the catalog (built in, plus `events_dir`), as a
//! list or as an AsyncAPI 3.0 document of the NATS subjects the relay publishes them on.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Map, Value, json};
use switchyard_events::{Catalog, Origin, Schema, encode_type, schema_uri};

use crate::{
    output::{self, Output},
    settings::Settings,
};

#[derive(Debug, Subcommand)]
pub(crate) enum CatalogCommand {
    /// Every event type: name, origin (built in or `events_dir`), description.
    ///
    /// Example: `switchyard catalog list --output json`
    List,
    /// The AsyncAPI 3.0 document of the event stream: one channel per type (address
    /// `{prefix}.{workspace}.<type>`), the relay's `send` operation on it, the message's NATS
    /// headers and its CloudEvent payload with the type's schema as `data`. Always JSON.
    ///
    /// Example: `switchyard catalog asyncapi --prefix sy > asyncapi.json`
    Asyncapi {
        /// The subject prefix to show as the default of `{prefix}` (default: the
        /// configuration's `relay.subject_prefix`).
        #[arg(long)]
        prefix: Option<String>,
    },
}

pub(crate) fn run(
    settings: &Settings,
    command: CatalogCommand,
    output: Output,
) -> anyhow::Result<()> {
    let catalog = Catalog::load(settings.events_dir.as_deref())
        .context("loading the event catalog")
        .map_err(|e| output::usage(format!("{e:#}")))?;
    match command {
        CatalogCommand::List => {
            let types: Vec<Value> = catalog
                .iter()
                .map(|s| {
                    json!({
                        "type": s.event_type(),
                        "builtin": matches!(s.origin(), Origin::Builtin),
                        "description": s.description(),
                        "dataschema": schema_uri(s.event_type()),
                    })
                })
                .collect();
            output.print(&types, || {
                catalog
                    .iter()
                    .map(|s| {
                        format!(
                            "{:<40} {:<8} {}",
                            s.event_type().as_str(),
                            if matches!(s.origin(), Origin::Builtin) {
                                "builtin"
                            } else {
                                "custom"
                            },
                            s.description().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        CatalogCommand::Asyncapi { prefix } => {
            let prefix = prefix.unwrap_or_else(|| settings.relay.subject_prefix.clone());
            let document = asyncapi(&catalog, &prefix);
            println!("{}", serde_json::to_string_pretty(&document)?);
            Ok(())
        }
    }
}

/// A key usable as an AsyncAPI component or channel id (`[A-Za-z0-9_.-]`).
fn key(ty: &str) -> String {
    ty.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The type's JSON Schema as an AsyncAPI schema: `$schema` and `$id` dropped, its `$defs` moved
/// to `components.schemas` as `<key>__<name>` and the local `$ref`s pointed there (a `$ref` to
/// `#/$defs/…` would otherwise resolve against the AsyncAPI document's root).
fn embed(schema: &Schema, shared: &mut Map<String, Value>) -> Value {
    let ty = key(schema.event_type().as_str());
    let mut document = schema.document().clone();
    if let Some(object) = document.as_object_mut() {
        object.remove("$schema");
        object.remove("$id");
        if let Some(Value::Object(defs)) = object.remove("$defs") {
            for (name, mut def) in defs {
                rewrite_refs(&mut def, &ty);
                shared.insert(format!("{ty}__{name}"), def);
            }
        }
    }
    rewrite_refs(&mut document, &ty);
    document
}

fn rewrite_refs(value: &mut Value, ty: &str) {
    match value {
        Value::Object(object) => {
            for (k, v) in object.iter_mut() {
                if k == "$ref"
                    && let Some(name) = v.as_str().and_then(|r| r.strip_prefix("#/$defs/"))
                {
                    *v = Value::String(format!("#/components/schemas/{ty}__{name}"));
                } else {
                    rewrite_refs(v, ty);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, ty)),
        _ => {}
    }
}

/// The AsyncAPI 3.0 document of `catalog`'s types on subjects `<prefix>.<workspace>.<type>`.
pub(crate) fn asyncapi(catalog: &Catalog, prefix: &str) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    for schema in catalog.iter() {
        let ty = schema.event_type();
        let id = key(ty.as_str());
        let data = embed(schema, &mut schemas);
        schemas.insert(id.clone(), data);
        let token = encode_type(ty);
        let description = schema.description().unwrap_or_default();
        channels.insert(
            id.clone(),
            json!({
                "address": format!("{{prefix}}.{{workspace}}.{token}"),
                "title": ty.as_str(),
                "description": format!(
                    "Every stored `{ty}` event, published by the relay in the store's global order. {description}"
                ),
                "parameters": {
                    "prefix": {
                        "description": "The relay's subject prefix (`relay.subject_prefix`).",
                        "default": prefix,
                        "examples": [prefix],
                    },
                    "workspace": {
                        "description": "The workspace of the event.",
                        "examples": ["demo"],
                    },
                },
                "messages": {id.clone(): {"$ref": format!("#/components/messages/{id}")}},
            }),
        );
        operations.insert(
            format!("relay_{id}"),
            json!({
                "action": "send",
                "title": format!("The relay publishes {ty}"),
                "summary": format!(
                    "After its commit, each `{ty}` is published once (JetStream drops a re-publish by `Nats-Msg-Id`). Agents consume it with a durable pull consumer named `<agent>--{}`, filter `{{prefix}}.*.{token}`.",
                    token.replace('.', "_")
                ),
                "channel": {"$ref": format!("#/channels/{id}")},
                "messages": [{"$ref": format!("#/channels/{id}/messages/{id}")}],
            }),
        );
        messages.insert(
            id.clone(),
            json!({
                "name": ty.as_str(),
                "title": ty.as_str(),
                "summary": description,
                "contentType": "application/cloudevents+json",
                "headers": {"$ref": "#/components/schemas/nats_headers"},
                "payload": {
                    "allOf": [
                        {"$ref": "#/components/schemas/cloudevent"},
                        {
                            "type": "object",
                            "properties": {
                                "type": {"const": ty.as_str()},
                                "dataschema": {"const": schema_uri(ty)},
                                "data": {"$ref": format!("#/components/schemas/{id}")},
                            },
                        },
                    ],
                },
            }),
        );
    }
    schemas.insert("cloudevent".into(), cloudevent_schema());
    schemas.insert("nats_headers".into(), headers_schema());
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Switchyard events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The events of a Switchyard store as the relay publishes them to NATS JetStream: one subject per workspace and type, structured-mode CloudEvents. Generated by `switchyard catalog asyncapi` from the schemas in `events/` (and `events_dir`).",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "A local nats-server with JetStream (scripts/up starts one). The stream is `relay.stream` (default SWITCHYARD), capturing `<prefix>.>`.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    })
}

fn cloudevent_schema() -> Value {
    let string =
        |description: &str| json!({"type": "string", "minLength": 1, "description": description});
    json!({
        "type": "object",
        "description": "A CloudEvent 1.0 in structured mode, as stored and as the API returns it.",
        "required": ["specversion", "id", "source", "type", "subject", "time", "sequence", "workspace", "correlationid", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": string("Unique per workspace and source; a repeat is a duplicate, stored once."),
            "source": string("Who emitted it: `/agents/<name>`, `/api`, `/cli`, `/github`, …"),
            "type": string("The event type, versioned (`….v1`)."),
            "subject": string("The stream within the workspace (`proposal/<id>`, `agent/<name>`, …)."),
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            "dataschema": {"type": "string", "description": "The catalog's URI of the type's schema."},
            "sequence": string("The store's global position (decimal); gap-free order."),
            "workspace": string("The workspace (a CloudEvents extension)."),
            "correlationid": string("The work this belongs to: the first event's id, carried along."),
            "causationid": string("The id of the event whose handling emitted this one."),
            "traceparent": string("W3C trace context of the append."),
            "data": {"description": "The type's payload; see the message's schema."},
        },
    })
}

fn headers_schema() -> Value {
    let header = |description: &str| json!({"type": "string", "description": description});
    json!({
        "type": "object",
        "description": "NATS headers of every relayed message. Consumers should load the event by `ce-sequence` or trust the body; the headers allow routing without parsing it.",
        "required": ["ce-id", "ce-source", "ce-type", "ce-subject", "ce-workspace", "ce-sequence", "Nats-Msg-Id"],
        "properties": {
            "ce-id": header("The CloudEvent id."),
            "ce-source": header("The CloudEvent source."),
            "ce-type": header("The event type (also the subject's last tokens)."),
            "ce-subject": header("The stream id."),
            "ce-workspace": header("The workspace."),
            "ce-sequence": header("The store's global position."),
            "traceparent": header("W3C trace context, when the event has one."),
            "Nats-Msg-Id": header("`<workspace>:<sequence>`: JetStream de-duplication of re-publishes."),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_channel_a_message_and_resolvable_refs() {
        let catalog = Catalog::builtin().unwrap();
        let document = asyncapi(&catalog, "sy");
        assert_eq!(document["asyncapi"], "3.0.0");
        let channels = document["channels"].as_object().unwrap();
        assert_eq!(channels.len(), catalog.len());
        let approved = &channels["proposal_approved_v1"];
        assert_eq!(
            approved["address"],
            "{prefix}.{workspace}.proposal.approved.v1"
        );
        // Every `$ref` points at something in the document.
        fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
            match value {
                Value::Object(o) => {
                    for (k, v) in o {
                        match (k.as_str(), v.as_str()) {
                            ("$ref", Some(r)) => out.push(r),
                            _ => refs(v, out),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(&document, &mut found);
        assert!(found.len() > 3 * catalog.len());
        for r in found {
            let pointer = r.strip_prefix('#').unwrap();
            assert!(document.pointer(pointer).is_some(), "{r} does not resolve");
        }
        // The $defs of proposal.created.v1 moved to components.
        assert!(
            document
                .pointer("/components/schemas/proposal_created_v1__change")
                .is_some()
        );
        assert!(
            !serde_json::to_string(&document)
                .unwrap()
                .contains("#/$defs/")
        );
    }
}
