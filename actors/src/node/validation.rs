//! Validation of what a client asks a node to write: a new parameter value against its
//! datainfo and the dynamic limits, a command argument against its datainfo. It runs
//! before any device sees the request, so a device only ever receives values that fit.

use super::NodeActor;
use secop_proto::{Accessible, Kind, SecopError};
use serde_json::Value;

impl NodeActor {
    /// The current value of accessible `name` of module `m` (constant or cached).
    fn cached_value(&self, m: usize, name: &str) -> Option<&Value> {
        let p = self.description.modules[m].accessible_index(name)?;
        let acc = &self.description.modules[m].accessibles[p];
        if let Some(c) = &acc.constant {
            return Some(c);
        }
        self.modules[m].params[p]
            .as_ref()
            .and_then(|s| s.value.as_ref().ok())
    }

    /// Validate a new value for a parameter: writable, datainfo, dynamic limits
    /// (`<p>_min`, `<p>_max`, `<p>_limits`), optional struct members filled in.
    pub(super) fn check_change(
        &self,
        m: usize,
        p: usize,
        value: &Value,
    ) -> Result<Value, SecopError> {
        let acc: &Accessible = &self.description.modules[m].accessibles[p];
        let module = &self.modules[m].name;
        if acc.constant.is_some() || acc.is_readonly() {
            return Err(SecopError::read_only(format!(
                "{module}:{} is read-only",
                acc.name
            )));
        }
        let value = acc
            .datainfo
            .validate(value)
            .map_err(|e| e.context(&format!("{module}:{}", acc.name)))?;
        if acc.datainfo.is_numeric() {
            // `<p>_min` etc. have the type of `<p>`, so wire values compare directly.
            let x = value.as_f64();
            let min = self
                .cached_value(m, &format!("{}_min", acc.name))
                .and_then(Value::as_f64);
            let max = self
                .cached_value(m, &format!("{}_max", acc.name))
                .and_then(Value::as_f64);
            let limits = self
                .cached_value(m, &format!("{}_limits", acc.name))
                .and_then(Value::as_array)
                .and_then(|l| Some((l.first()?.as_f64()?, l.get(1)?.as_f64()?)));
            let (lo, hi) = match limits {
                Some((lo, hi)) => (Some(lo), Some(hi)),
                None => (min, max),
            };
            if let Some(x) = x {
                if lo.is_some_and(|l| x < l) || hi.is_some_and(|h| x > h) {
                    return Err(SecopError::range(format!(
                        "{module}:{} = {} is outside the current limits [{}, {}]",
                        acc.name,
                        value,
                        lo.map_or("..".into(), |v| v.to_string()),
                        hi.map_or("..".into(), |v| v.to_string()),
                    )));
                }
            }
        }
        let current = self.modules[m].params[p]
            .as_ref()
            .and_then(|s| s.value.as_ref().ok());
        Ok(acc.datainfo.fill_optional(value, current))
    }

    pub(super) fn check_argument(
        &self,
        m: usize,
        c: usize,
        argument: &Value,
    ) -> Result<Value, SecopError> {
        let acc = &self.description.modules[m].accessibles[c];
        let argument_type = match &acc.datainfo.kind {
            Kind::Command { argument, .. } => argument.as_deref(),
            _ => None,
        };
        match argument_type {
            Some(di) => di
                .validate(argument)
                .map_err(|e| e.context(&format!("{}:{} argument", self.modules[m].name, acc.name))),
            None if argument.is_null() => Ok(Value::Null),
            None => Err(SecopError::wrong_type(format!(
                "{}:{} takes no argument",
                self.modules[m].name, acc.name
            ))),
        }
    }
}
