//! The `sluice.v1` messages and the serving layer's types, converted both ways: models and
//! their settings ([`models`]), applications, answers and states ([`apps`]), and the JSON
//! form of the application messages ([`json`]), which the REST API serves and the CLI prints,
//! so the two cannot differ. Every error names the field it is about.

pub mod apps;
pub mod json;
pub mod models;

/// Protobuf's empty string means "not given": `None` for it, the value otherwise.
pub fn non_empty<S: AsRef<str>>(s: S) -> Option<S> {
    (!s.as_ref().is_empty()).then_some(s)
}
