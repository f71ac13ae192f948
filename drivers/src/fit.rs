//! Whether values fit their datainfo (stub; replaced by the full module).

use crate::ascii::line_safety::Quoted;
use secop_proto::{DataInfo, SecopError};
use serde_json::Value;

/// A value from the device, checked against its datainfo before it leaves the
/// gateway: else a HardwareError naming the raw reply.
pub fn device_value(datainfo: &DataInfo, value: Value, raw: &str) -> Result<Value, SecopError> {
    datainfo.validate(&value).map_err(|e| {
        SecopError::hardware(format!("reply {} does not fit: {}", Quoted(raw), e.text))
    })
}
