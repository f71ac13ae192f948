//! Actors of the gateway: the SECoP node, client sessions and the device contract.
//!
//! See ARCHITECTURE.md at the repository root for who owns what and how messages flow.

pub mod audit;
pub mod deadline;
pub mod device;
pub mod device_actor;
pub mod history;
pub mod input_budget;
pub mod line_codec;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod session;
pub mod writer;
