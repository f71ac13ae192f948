//! The 21 SECoP 2.0 error classes and the error value carried through the gateway.
//!
//! Every failure that reaches a client — from a malformed line to a serial port that
//! stopped answering — becomes a [`SecopError`], so that the wire format of errors is
//! produced in exactly one place ([`crate::message`]).

use serde_json::{Map, Value};
use std::fmt;

/// An error class of SECoP 2.0 (messages/errors.rst). The spelling is the wire spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    ProtocolError,
    NoSuchModule,
    NoSuchParameter,
    NoSuchCommand,
    ReadOnly,
    NotCheckable,
    WrongType,
    RangeError,
    BadJSON,
    NotImplemented,
    HardwareError,
    CommandRunning,
    CommunicationFailed,
    TimeoutError,
    IsBusy,
    IsError,
    Disabled,
    Impossible,
    ReadFailed,
    OutOfRange,
    InternalError,
}

impl ErrorClass {
    /// All classes, in the order of the specification's table.
    pub const ALL: [ErrorClass; 21] = [
        ErrorClass::ProtocolError,
        ErrorClass::NoSuchModule,
        ErrorClass::NoSuchParameter,
        ErrorClass::NoSuchCommand,
        ErrorClass::ReadOnly,
        ErrorClass::NotCheckable,
        ErrorClass::WrongType,
        ErrorClass::RangeError,
        ErrorClass::BadJSON,
        ErrorClass::NotImplemented,
        ErrorClass::HardwareError,
        ErrorClass::CommandRunning,
        ErrorClass::CommunicationFailed,
        ErrorClass::TimeoutError,
        ErrorClass::IsBusy,
        ErrorClass::IsError,
        ErrorClass::Disabled,
        ErrorClass::Impossible,
        ErrorClass::ReadFailed,
        ErrorClass::OutOfRange,
        ErrorClass::InternalError,
    ];

    /// The class name as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::ProtocolError => "ProtocolError",
            ErrorClass::NoSuchModule => "NoSuchModule",
            ErrorClass::NoSuchParameter => "NoSuchParameter",
            ErrorClass::NoSuchCommand => "NoSuchCommand",
            ErrorClass::ReadOnly => "ReadOnly",
            ErrorClass::NotCheckable => "NotCheckable",
            ErrorClass::WrongType => "WrongType",
            ErrorClass::RangeError => "RangeError",
            ErrorClass::BadJSON => "BadJSON",
            ErrorClass::NotImplemented => "NotImplemented",
            ErrorClass::HardwareError => "HardwareError",
            ErrorClass::CommandRunning => "CommandRunning",
            ErrorClass::CommunicationFailed => "CommunicationFailed",
            ErrorClass::TimeoutError => "TimeoutError",
            ErrorClass::IsBusy => "IsBusy",
            ErrorClass::IsError => "IsError",
            ErrorClass::Disabled => "Disabled",
            ErrorClass::Impossible => "Impossible",
            ErrorClass::ReadFailed => "ReadFailed",
            ErrorClass::OutOfRange => "OutOfRange",
            ErrorClass::InternalError => "InternalError",
        }
    }

    /// Parse a class name as a remote node sends it. A `Class:SubClass` suffix is
    /// reduced to `Class` (must-accept rule 6); unknown names yield `None` so that the
    /// caller can decide on a generic class.
    pub fn parse(name: &str) -> Option<ErrorClass> {
        let base = name.split(':').next().unwrap_or(name);
        ErrorClass::ALL.iter().copied().find(|c| c.as_str() == base)
    }

    /// Retryable classes describe a transient condition (errors.rst); the others
    /// persist for the same request.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::CommandRunning
                | ErrorClass::CommunicationFailed
                | ErrorClass::TimeoutError
                | ErrorClass::IsBusy
                | ErrorClass::IsError
                | ErrorClass::Disabled
                | ErrorClass::Impossible
                | ErrorClass::ReadFailed
                | ErrorClass::OutOfRange
                | ErrorClass::InternalError
        )
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SECoP error: class, human readable text and an info object.
#[derive(Debug, Clone, PartialEq)]
pub struct SecopError {
    pub class: ErrorClass,
    pub text: String,
    /// The info object; `None` when empty. Boxed: errors travel inside every
    /// `Result<Value, SecopError>` the node and devices pass around, and most carry no
    /// info, so the common case stays small to move.
    pub info: Option<Box<Map<String, Value>>>,
}

impl SecopError {
    pub fn new(class: ErrorClass, text: impl Into<String>) -> Self {
        SecopError {
            class,
            text: text.into(),
            info: None,
        }
    }

    /// Attach an entry to the info object (e.g. `closest_valid`).
    pub fn with_info(mut self, key: &str, value: Value) -> Self {
        self.info
            .get_or_insert_with(Box::default)
            .insert(key.to_owned(), value);
        self
    }

    /// Prefix the text with a location such as a struct member path, keeping the class.
    pub fn context(mut self, location: &str) -> Self {
        self.text = format!("{location}: {}", self.text);
        self
    }
}

impl fmt::Display for SecopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.text)
    }
}

impl std::error::Error for SecopError {}

/// Shorthand constructors, one per class, so call sites read like the spec.
macro_rules! shorthand {
    ($($fn_name:ident => $class:ident),* $(,)?) => {
        impl SecopError {
            $(
                #[doc = concat!("A `", stringify!($class), "` error.")]
                pub fn $fn_name(text: impl Into<String>) -> Self {
                    SecopError::new(ErrorClass::$class, text)
                }
            )*
        }
    };
}

shorthand! {
    protocol => ProtocolError,
    no_such_module => NoSuchModule,
    no_such_parameter => NoSuchParameter,
    no_such_command => NoSuchCommand,
    read_only => ReadOnly,
    not_checkable => NotCheckable,
    wrong_type => WrongType,
    range => RangeError,
    bad_json => BadJSON,
    not_implemented => NotImplemented,
    hardware => HardwareError,
    command_running => CommandRunning,
    communication_failed => CommunicationFailed,
    timeout => TimeoutError,
    is_busy => IsBusy,
    is_error => IsError,
    disabled => Disabled,
    impossible => Impossible,
    read_failed => ReadFailed,
    out_of_range => OutOfRange,
    internal => InternalError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_one_distinct_classes_round_trip() {
        let mut names: Vec<&str> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 21);
        for class in ErrorClass::ALL {
            assert_eq!(ErrorClass::parse(class.as_str()), Some(class));
        }
    }

    #[test]
    fn subclass_suffix_is_reduced() {
        assert_eq!(
            ErrorClass::parse("WrongType:MustBeInt"),
            Some(ErrorClass::WrongType)
        );
        assert_eq!(ErrorClass::parse("BadValue"), None);
    }
}
