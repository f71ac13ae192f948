//! The node's side of the audit trail: every `change` and `do` a session asked for,
//! accepted or refused, becomes one [`AuditRecord`] handed to the [`AuditLog`] (which
//! writes it on its own thread, off this actor's path).
//!
//! [`AuditLog`]: crate::audit::AuditLog

use super::{NodeActor, SessionId};
use crate::audit::{AuditOutcome, AuditRecord};
use secop_proto::{ParsedRequest, Request, SecopError};
use serde_json::Value;
use std::time::SystemTime;

impl NodeActor {
    /// Record the outcome of `request` if it is a `change` or a `do`.
    pub(super) fn audit(
        &self,
        session: SessionId,
        request: &ParsedRequest,
        outcome: Result<&Value, &SecopError>,
    ) {
        let Some(log) = &self.settings.audit else {
            return;
        };
        let value = match &request.request {
            Request::Change { value, .. } => Some(value.clone()),
            Request::Do { argument, .. } => (!argument.is_null()).then(|| argument.clone()),
            _ => return,
        };
        let client = self.sessions.get(&session).map(|s| s.client);
        log.record(AuditRecord {
            time: SystemTime::now(),
            node: self.audit_node.clone(),
            client: client.and_then(|c| c.address),
            transport: client.map_or(crate::audit::Transport::Tcp, |c| c.transport),
            session,
            action: request.action.as_str().into(),
            specifier: request.specifier.clone(),
            request: value,
            outcome: match outcome {
                Ok(v) => AuditOutcome::Ok(v.clone()),
                Err(e) => AuditOutcome::from(e),
            },
        });
    }
}
