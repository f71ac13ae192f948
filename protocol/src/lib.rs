//! SECoP 2.0 protocol core: wire format, error classes, datainfo and description.
//!
//! This crate does no I/O and knows nothing about actors, so every rule of the
//! specification can be unit-tested in isolation and reused by the gateway, its
//! upstream client and the benchmark load generator alike.

pub mod datainfo;
pub mod description;
pub mod error;
pub mod json;
pub mod message;
pub mod status;

pub use datainfo::{DataInfo, DataInfoError, Kind};
pub use description::{
    Accessible, AccessibleKind, DescriptionError, ModuleDescription, NodeDescription,
};
pub use error::{ErrorClass, SecopError};
pub use message::{LogLevel, ParsedRequest, Qualifiers, Request};
