//! NATS subjects of events: `<prefix>.<workspace>.<type>`, with event types that are not
//! plain subject tokens encoded so that they are never dropped or mis-routed.

use crate::{EventType, Workspace};

/// Encodes an event type as NATS subject tokens. Types made of non-empty tokens of
/// `A-Z a-z 0-9 _ -` (all of Switchyard's own) are used as they are, so
/// `proposal.approved.v1` stays three tokens and `sy.*.proposal.approved.v1` matches it in
/// every workspace. Any other type (spaces, `*`, `>`, empty tokens, other characters) becomes a
/// single token: `_` followed by the hex of its bytes. It is never dropped.
pub fn encode_type(ty: &EventType) -> String {
    let plain = |token: &str| {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && !token.starts_with('_')
    };
    if ty.as_str().split('.').all(plain) {
        ty.as_str().to_owned()
    } else {
        let mut token = String::from("_");
        for b in ty.as_str().bytes() {
            token.push_str(&format!("{b:02x}"));
        }
        token
    }
}

/// The subject of an event: `<prefix>.<workspace>.<encoded type>`.
pub fn subject(prefix: &str, workspace: &Workspace, ty: &EventType) -> String {
    format!("{prefix}.{workspace}.{}", encode_type(ty))
}

/// The subject filter that matches one type in every workspace: `<prefix>.*.<encoded type>`.
pub fn type_filter(prefix: &str, ty: &EventType) -> String {
    format!("{prefix}.*.{}", encode_type(ty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_become_subject_tokens() {
        let ws = Workspace::parse("demo").unwrap();
        let ty = EventType::parse("proposal.approved.v1").unwrap();
        assert_eq!(subject("sy", &ws, &ty), "sy.demo.proposal.approved.v1");
        assert_eq!(type_filter("sy", &ty), "sy.*.proposal.approved.v1");
        for odd in [
            "com.example.Order Placed",
            "a.*.b",
            "a.>",
            "a..b",
            ".a",
            "_x.y",
            "é.v1",
        ] {
            let ty = EventType::parse(odd).unwrap();
            let token = encode_type(&ty);
            assert!(token.starts_with('_'), "{odd} -> {token}");
            assert!(!token.contains(['.', ' ', '*', '>']), "{odd} -> {token}");
        }
        // Distinct types never share a subject.
        let a = encode_type(&EventType::parse("a b").unwrap());
        let b = encode_type(&EventType::parse("a_b").unwrap());
        assert_ne!(a, b);
    }
}
