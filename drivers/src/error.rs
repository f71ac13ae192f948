//! Why a driver, a link or a module on it cannot be built from the configuration.

use crate::ascii::line_safety::UnsafeChar;
use crate::ascii::template::TemplateError;
use crate::limits::RangeError;
use secop_proto::DataInfoError;

/// Why a driver, a link or one of its modules could not be built from the config.
///
/// The key is data, not text: [`ConfigError::At`] (and a [`RangeError`]) carry the
/// path of the offending key within the module's or link's section (`settings.ramp`,
/// `parameter[0] ("v").write`, `timeout`), and `Display` writes "key: reason" from it.
/// The config loader puts the section in front with [`within`](Self::within).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A module's `driver` names none of [`DRIVERS`](crate::DRIVERS).
    #[error("unknown driver {0:?}; known drivers: {known}", known = crate::DRIVERS.join(", "))]
    UnknownDriver(String),
    /// A problem with the value at `key`.
    #[error("{key}: {error}")]
    At {
        key: String,
        error: Box<ConfigError>,
    },
    /// A number outside its valid range; the key is in it.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// A problem of one module on a link.
    #[error("module {name:?}: {error}")]
    Module {
        name: String,
        error: Box<ConfigError>,
    },
    /// Why the value (or the section) is wrong, in words.
    #[error("{0}")]
    Invalid(String),
    /// A datainfo from the config (the `datainfo` of a parameter).
    #[error(transparent)]
    DataInfo(#[from] DataInfoError),
    /// A datainfo a module declares (a simulator's, or a command's made from its
    /// `argument` and `result`), shown with its JSON.
    #[error("datainfo {json}: {error}")]
    Declared { json: String, error: DataInfoError },
    /// A command template.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A command line that is sent as it is (a query, an init string, `identify`, a
    /// stop command) but could not be sent on the link.
    #[error("{text:?}: {error}")]
    Line { text: String, error: UnsafeChar },
    /// A reply pattern.
    #[error("invalid regular expression: {0}")]
    Regex(#[from] regex::Error),
    /// A datainfo that does not fit its register type, template or reply.
    #[error(transparent)]
    Misfit(Box<crate::fit::Misfit>),
}

impl From<crate::fit::Misfit> for ConfigError {
    fn from(misfit: crate::fit::Misfit) -> Self {
        ConfigError::Misfit(Box::new(misfit))
    }
}

impl ConfigError {
    /// `error` at `key`.
    pub fn at(key: impl Into<String>, error: impl Into<ConfigError>) -> Self {
        ConfigError::At {
            key: key.into(),
            error: Box::new(error.into()),
        }
    }

    /// The value at `key` is wrong for the reason given in words.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::at(key, ConfigError::Invalid(reason.into()))
    }

    /// A problem of the module `name` on a link.
    pub fn in_module(self, name: &str) -> Self {
        ConfigError::Module {
            name: name.to_owned(),
            error: Box::new(self),
        }
    }

    /// The same error one level further out: its key within `prefix`
    /// (`parameter[0] ("v")` + `scale` → `parameter[0] ("v").scale`); an error without
    /// a key gets `prefix` as its key.
    pub fn within(self, prefix: &str) -> Self {
        match self {
            ConfigError::At { key, error } => ConfigError::At {
                key: format!("{prefix}.{key}"),
                error,
            },
            ConfigError::Range(r) => ConfigError::Range(r.within(prefix)),
            other => ConfigError::at(prefix, other),
        }
    }

    /// The key the error names, if it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::At { key, .. } => Some(key),
            ConfigError::Range(r) => Some(r.key()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_joined_from_data() {
        let e = ConfigError::invalid("scale", "must be a non-zero number");
        assert_eq!(e.key(), Some("scale"));
        let e = e.within("parameter[0] (\"v\")");
        assert_eq!(e.key(), Some("parameter[0] (\"v\").scale"));
        assert_eq!(
            e.in_module("X").to_string(),
            "module \"X\": parameter[0] (\"v\").scale: must be a non-zero number"
        );
        let e = ConfigError::Invalid("give either serial or tcp, not both".into());
        assert_eq!(e.key(), None);
        assert_eq!(
            e.within("settings").to_string(),
            "settings: give either serial or tcp, not both"
        );
        let e = ConfigError::from(crate::limits::count("baud", 1, 50, 100, "baud").unwrap_err());
        assert_eq!(
            e.within("link").to_string(),
            "link.baud: 1 baud is outside the valid range 50 ..= 100 baud"
        );
        assert!(ConfigError::UnknownDriver("x".into())
            .to_string()
            .starts_with("unknown driver \"x\"; known drivers: sim_"));
    }
}
